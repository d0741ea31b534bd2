package api_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
)

// TestFuzzCorpus keeps the seed corpus meaningful: files named valid_* must
// be accepted and every other file refused, so that a change to the
// messages cannot silently turn the valid seeds into rejects.
func TestFuzzCorpus(t *testing.T) {
	for fuzz, newV := range map[string]func() api.Validator{
		"FuzzUnmarshalBegin":       func() api.Validator { return new(api.BeginRequest) },
		"FuzzUnmarshalFinish":      func() api.Validator { return new(api.FinishRequest) },
		"FuzzUnmarshalPreregister": func() api.Validator { return new(api.PreregisterRequest) },
	} {
		files, err := filepath.Glob(filepath.Join("testdata", "fuzz", fuzz, "*"))
		if err != nil {
			t.Fatal(err)
		}
		var valid int
		for _, file := range files {
			name := filepath.Base(file)
			wantValid := strings.HasPrefix(name, "valid_")
			if wantValid {
				valid++
			}
			t.Run(fuzz+"/"+name, func(t *testing.T) {
				body := readCorpusFile(t, file)
				err := api.Unmarshal(body, newV())
				if wantValid && err != nil {
					t.Errorf("valid seed refused: %v", err)
				}
				if !wantValid && err == nil {
					t.Errorf("edge-case seed accepted; rename it valid_* if that is intended")
				}
			})
		}
		if valid == 0 {
			t.Errorf("%s: no valid_* seed in testdata", fuzz)
		}
	}
}

// readCorpusFile reads a one-value []byte file in the "go test fuzz v1"
// format.
func readCorpusFile(t *testing.T, file string) []byte {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	header, value, ok := strings.Cut(strings.TrimSpace(string(raw)), "\n")
	if !ok || header != "go test fuzz v1" {
		t.Fatalf("%s: not a go test fuzz v1 file", file)
	}
	lit, prefixed := strings.CutPrefix(value, "[]byte(")
	lit, suffixed := strings.CutSuffix(lit, ")")
	if !prefixed || !suffixed {
		t.Fatalf("%s: want one []byte(...) value, got %.40q", file, value)
	}
	s, err := strconv.Unquote(lit)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return []byte(s)
}
