package store

import (
	jsonv2 "github.com/go-json-experiment/json"
	jsonv1 "github.com/go-json-experiment/json/v1"
)

// DecodeRecord decodes a stored record. Records are written with
// encoding/json and read with encoding/json/v2's implementation
// (github.com/go-json-experiment/json, the standard library's from Go
// 1.27), which unmarshals several times faster: a device record is read
// at every begin and again in the finish transaction. Unknown members are
// ignored, so an older build reads a newer record; names match exactly,
// as encoding/json wrote them; a time.Duration is read as encoding/json
// wrote it, integer nanoseconds (v2 has no default for it).
func DecodeRecord(raw []byte, v any) error {
	return jsonv2.Unmarshal(raw, v, jsonv1.FormatDurationAsNano(true))
}
