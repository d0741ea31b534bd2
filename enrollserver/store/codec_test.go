package store

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fill sets every field reachable from v (a pointer) to a non-zero value
// derived from seed, so a field type DecodeRecord reads differently from
// encoding/json cannot hide behind a zero value.
func fill(t *testing.T, v reflect.Value, seed int) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		fill(t, v.Elem(), seed)
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Date(2026, 11, 30, 12, 0, seed%60, 123456789, time.UTC)))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(t, v.Field(i), seed+i+1)
			}
		}
	case reflect.String:
		v.SetString("value-" + string(rune('a'+seed%26)) + "-✓")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(seed)*1_000_003 + 7) // time.Duration too
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(seed) + 3)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(float64(seed) + 0.5)
	case reflect.Slice:
		if v.Type() == reflect.TypeFor[json.RawMessage]() {
			v.SetBytes([]byte(`{"key":[1,"two",{"n":null}],"seed":` + fmt.Sprint(seed) + `}`))
			return
		}
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := range 2 {
			fill(t, s.Index(i), seed+i)
		}
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(t, k, seed)
		fill(t, e, seed+1)
		m.SetMapIndex(k, e)
		v.Set(m)
	default:
		t.Fatalf("fill: no value for kind %s (%s): extend fill", v.Kind(), v.Type())
	}
}

// TestDecodeRecordReadsWhatEncodingJSONWrote: records are written with
// encoding/json and read with DecodeRecord (json v2); for every record type
// both must read a fully populated record back identically.
func TestDecodeRecordReadsWhatEncodingJSONWrote(t *testing.T) {
	for _, rec := range []any{
		&Session{}, &Device{}, &IssuedCertificate{}, &Preregistration{}, &Revocation{},
		&ImportBatch{}, &StagedRow{}, &Group{}, &ConfigVersion{}, &AuditRecord{},
		&FirmwareReference{}, &FirmwareMeasurement{}, &completed{},
	} {
		typ := reflect.TypeOf(rec).Elem()
		t.Run(typ.Name(), func(t *testing.T) {
			fill(t, reflect.ValueOf(rec), 1)
			raw, err := json.Marshal(rec)
			if err != nil {
				t.Fatal(err)
			}
			v1, v2 := reflect.New(typ).Interface(), reflect.New(typ).Interface()
			if err := json.Unmarshal(raw, v1); err != nil {
				t.Fatalf("encoding/json: %v", err)
			}
			if err := DecodeRecord(raw, v2); err != nil {
				t.Fatalf("DecodeRecord(%s): %v", raw, err)
			}
			if diff := cmp.Diff(v1, v2); diff != "" {
				t.Errorf("DecodeRecord differs from encoding/json (-v1 +v2):\n%s", diff)
			}
			if diff := cmp.Diff(rec, v2); diff != "" {
				t.Errorf("record does not round-trip (-written +read):\n%s", diff)
			}
		})
	}
}
