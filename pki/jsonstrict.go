package pki

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
)

// decodeStrict decodes data, which must be exactly one JSON object, into v.
// Beyond encoding/json it refuses duplicate keys at any depth, top-level keys
// other than fields (compared exactly, where encoding/json ignores case),
// nesting deeper than MaxJSONDepth and trailing data.
func decodeStrict(data []byte, v any, fields ...string) error {
	if err := checkJSON(data, fields); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// checkJSON walks the tokens of data and enforces the rules of decodeStrict.
func checkJSON(data []byte, fields []string) error {
	type frame struct {
		keys    map[string]bool // nil for an array
		wantKey bool
	}
	var stack []frame
	values := 0
	valueDone := func() {
		if n := len(stack); n == 0 {
			values++
		} else if stack[n-1].keys != nil {
			stack[n-1].wantKey = true
		}
	}

	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		n := len(stack)
		if n == 0 {
			if values > 0 {
				return errors.New("trailing data after the JSON object")
			}
			if tok != json.Delim('{') {
				return errors.New("not a JSON object")
			}
		}
		if n > 0 && stack[n-1].wantKey {
			if tok == json.Delim('}') {
				stack = stack[:n-1]
				valueDone()
				continue
			}
			key, ok := tok.(string)
			if !ok {
				return fmt.Errorf("object key is %T, not a string", tok)
			}
			if stack[n-1].keys[key] {
				return fmt.Errorf("duplicate key %.80q", key)
			}
			if n == 1 && fields != nil && !slices.Contains(fields, key) {
				return fmt.Errorf("unknown field %.80q", key)
			}
			stack[n-1].keys[key] = true
			stack[n-1].wantKey = false
			continue
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if n >= MaxJSONDepth {
				return fmt.Errorf("nested deeper than %d levels", MaxJSONDepth)
			}
			f := frame{}
			if tok == json.Delim('{') {
				f = frame{keys: map[string]bool{}, wantKey: true}
			}
			stack = append(stack, f)
		case json.Delim(']'):
			stack = stack[:n-1]
			valueDone()
		default:
			valueDone()
		}
	}
	if values != 1 {
		return errors.New("empty input; want one JSON object")
	}
	return nil
}
