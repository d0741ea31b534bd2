package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
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
	plain := plainJSON(body)
	if !plain {
		// The slow, exact path: it finds and names the fault, or accepts
		// what plainJSON is too simple to (escaped or non-ASCII keys).
		if err := checkDuplicateKeys(body); err != nil {
			return Errorf(CodeBadRequest, "invalid JSON: %v", err)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(CodeBadRequest, "invalid JSON: %v", err)
	}
	// A plain body is one JSON value: nothing can trail it.
	if !plain {
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			return Errorf(CodeBadRequest, "invalid JSON: trailing data after the message")
		}
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
// names a key twice (encoding/json would silently keep the last), nesting
// deeper than maxJSONDepth, and invalid UTF-8 (encoding/json would silently
// replace it with U+FFFD). Keys are compared the way encoding/json matches
// them to fields, ignoring case, so "ek_public" and "EK_PUBLIC" are
// duplicates.
func checkDuplicateKeys(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		keys      map[string]bool
		object    bool
		expectKey bool
		key       string // object: the key whose value is being read
		index     int    // array: the index of the element being read
	}
	var stack []*frame
	// name quotes the path of the value being read, such as "ak.public" or
	// "devices[3].serial", for error messages.
	name := func(frames []*frame, top string) string {
		var b strings.Builder
		for _, f := range frames {
			if !f.object {
				fmt.Fprintf(&b, "[%d]", f.index)
				continue
			}
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(f.key)
		}
		if b.Len() == 0 {
			return top
		}
		return fmt.Sprintf("%.128q", b.String())
	}
	for {
		off := dec.InputOffset()
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
		// Only separators (ASCII) lie between tokens, so this checks the
		// token's own bytes.
		if !utf8.Valid(body[off:dec.InputOffset()]) {
			if top != nil && top.object && top.expectKey {
				return fmt.Errorf("a key in %s is not valid UTF-8", name(stack[:len(stack)-1], "the top-level object"))
			}
			return fmt.Errorf("%s is not valid UTF-8", name(stack, "the top-level value"))
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				if top != nil && top.object {
					top.expectKey = true
				}
				if len(stack) >= maxJSONDepth {
					return fmt.Errorf("%s nests deeper than %d", name(stack, "the top-level value"), maxJSONDepth)
				}
				stack = append(stack, &frame{object: t == '{', expectKey: t == '{', keys: map[string]bool{}})
			case '}', ']':
				stack = stack[:len(stack)-1]
				if len(stack) > 0 {
					if parent := stack[len(stack)-1]; parent.object {
						parent.expectKey = true
					} else {
						parent.index++
					}
				}
			}
		default:
			if top != nil && top.object {
				if top.expectKey {
					k, _ := t.(string)
					top.key = k
					fk := foldKey(k)
					if top.keys[fk] {
						return fmt.Errorf("duplicate key %s", name(stack, ""))
					}
					top.keys[fk] = true
					top.expectKey = false
				} else {
					top.expectKey = true
				}
			} else if top != nil {
				top.index++
			}
		}
	}
}

// plainJSON is checkDuplicateKeys's fast path, for the messages devices
// send: it reports true only if body is one valid JSON value, valid UTF-8,
// nesting at most maxJSONDepth deep, whose object keys are all plain ASCII
// (no escapes) and unique within their object ignoring ASCII case (which
// for ASCII keys is exactly how foldKey compares). checkDuplicateKeys then
// has nothing to refuse; on false it runs and decides. It allocates only
// when the open objects hold more than 64 keys at once.
func plainJSON(body []byte) bool {
	if !utf8.Valid(body) || !json.Valid(body) {
		return false
	}
	var (
		keyBuf [4 * maxJSONDepth][]byte
		keys   = keyBuf[:0] // keys of the open objects, innermost last
		// starts[d] is where the keys of the object at depth d begin in
		// keys, or -1 for an array.
		starts [maxJSONDepth]int
		depth  int
	)
	for i := 0; i < len(body); i++ {
		switch c := body[i]; c {
		case '{', '[':
			if depth >= maxJSONDepth {
				return false
			}
			starts[depth] = -1
			if c == '{' {
				starts[depth] = len(keys)
			}
			depth++
		case '}', ']':
			depth--
			if starts[depth] >= 0 {
				keys = keys[:starts[depth]]
			}
		case '"':
			// body is valid JSON: the string ends at the first quote not
			// escaped.
			j, plain := i+1, true
			for ; body[j] != '"'; j++ {
				if body[j] == '\\' {
					plain = false
					j++
				} else if body[j] >= utf8.RuneSelf {
					plain = false
				}
			}
			s := body[i+1 : j]
			i = j
			// In valid JSON only a key is followed by a colon.
			k := j + 1
			for k < len(body) && (body[k] == ' ' || body[k] == '\t' || body[k] == '\n' || body[k] == '\r') {
				k++
			}
			if k == len(body) || body[k] != ':' {
				continue
			}
			if !plain {
				return false
			}
			for _, prev := range keys[starts[depth-1]:] {
				if asciiEqualFold(prev, s) {
					return false
				}
			}
			keys = append(keys, s)
		}
	}
	return true
}

// asciiEqualFold compares ASCII strings ignoring case.
func asciiEqualFold(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// foldKey folds k so that foldKey(x) == foldKey(y) exactly when
// encoding/json would match x and y to the same field (bytes.EqualFold):
// each rune becomes the smallest rune of its simple case-folding orbit.
func foldKey(k string) string {
	b := make([]rune, 0, len(k))
	for _, r := range k {
		for {
			r2 := unicode.SimpleFold(r)
			if r2 <= r {
				r = r2
				break
			}
			r = r2
		}
		b = append(b, r)
	}
	return string(b)
}
