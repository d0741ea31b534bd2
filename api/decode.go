package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Validator is a message that can check its own shape.
type Validator interface {
	Validate() error
}

// Decode reads one JSON message of at most limit bytes from r into v and
// validates it. It is strict: unknown fields, duplicate keys, trailing data
// and oversized bodies are errors. Every error is an *Error with
// CodeBadRequest and a message that says what to fix.
func Decode(r io.Reader, limit int64, v Validator) error {
	body, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return Errorf(CodeBadRequest, "reading body: %v", err)
	}
	if int64(len(body)) > limit {
		return Errorf(CodeBadRequest, "body exceeds %d bytes", limit)
	}
	return Unmarshal(body, v)
}

// Unmarshal is Decode for a body already in memory.
func Unmarshal(body []byte, v Validator) error {
	if err := checkDuplicateKeys(body); err != nil {
		return Errorf(CodeBadRequest, "invalid JSON: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(CodeBadRequest, "invalid JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Errorf(CodeBadRequest, "invalid JSON: trailing data after the message")
	}
	if err := v.Validate(); err != nil {
		var ae *Error
		if errors.As(err, &ae) {
			return ae
		}
		return Errorf(CodeBadRequest, "%v", err)
	}
	return nil
}

// maxJSONDepth bounds nesting; our messages nest at most 3 levels.
const maxJSONDepth = 16

// checkDuplicateKeys walks the token stream and rejects an object that
// names a key twice (encoding/json would silently keep the last), and
// nesting deeper than maxJSONDepth.
func checkDuplicateKeys(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		keys      map[string]bool
		object    bool
		expectKey bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				if top != nil && top.object {
					top.expectKey = true
				}
				if len(stack) >= maxJSONDepth {
					return fmt.Errorf("nesting deeper than %d", maxJSONDepth)
				}
				stack = append(stack, &frame{object: t == '{', expectKey: t == '{', keys: map[string]bool{}})
			case '}', ']':
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].object {
					stack[len(stack)-1].expectKey = true
				}
			}
		default:
			if top != nil && top.object {
				if top.expectKey {
					k, _ := t.(string)
					if top.keys[k] {
						return fmt.Errorf("duplicate key %q", k)
					}
					top.keys[k] = true
					top.expectKey = false
				} else {
					top.expectKey = true
				}
			}
		}
	}
}
