package api

import (
	"errors"
	"io"

	"github.com/go-json-experiment/json"
)

// Validator is a message that can check its own shape.
type Validator interface {
	Validate() error
}

// Decode reads one JSON message of at most limit bytes from r into v and
// validates it. It is strict: unknown fields (names match exactly, case
// included), duplicate keys, invalid UTF-8, trailing data and oversized
// bodies are errors. Every error is an *Error with CodeBadRequest and a
// message that says what to fix.
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

// decodeOptions make encoding/json/v2 (go-json-experiment/json) as strict
// as the protocol needs. Its defaults already refuse duplicate member
// names, invalid UTF-8 (including escaped lone surrogates) and anything
// after the value, and match names case-sensitively; we add refusing
// members no field takes, so a misspelt or case-changed field is an error
// rather than silently dropped. Nesting needs no cap here: no message has
// a field of type any, so anything nested where it does not belong is
// refused as an unknown member or a type mismatch at its first bracket. A
// raw field (ConfigSetRequest.Config) is read without recursion, up to
// jsontext's own cap of 10000 levels, and its Validate bounds it
// (MaxConfigJSONDepth).
var decodeOptions = json.RejectUnknownMembers(true)

// Unmarshal is Decode for a body already in memory. Its JSON errors name
// the offending member by its JSON pointer, such as "/ak/public".
func Unmarshal(body []byte, v Validator) error {
	if err := json.Unmarshal(body, v, decodeOptions); err != nil {
		// The error quotes the client's member names; the bound keeps an
		// absurd name out of the answer and the logs.
		return Errorf(CodeBadRequest, "invalid JSON: %.*s", maxJSONErrorLen, err)
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
