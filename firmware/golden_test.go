package firmware_test

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/edgeenroll/edgeenroll/firmware"
	elt "github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
)

// golden describes one committed log in testdata/ and what replaying it
// must give. testdata/golden.json lists them; -update rewrites both from the
// generator.
type golden struct {
	File            string            `json:"file"`
	PCRs            map[string]string `json:"pcrs"` // index -> hex SHA-256
	FirmwareDigest  string            `json:"firmware_digest,omitempty"`
	FirmwareVersion string            `json:"firmware_version,omitempty"`
	SecureBoot      bool              `json:"secure_boot"`
	// Refused is the reason Replay must give, if any.
	Refused string `json:"refused,omitempty"`
}

const goldenManifest = "testdata/golden.json"

// goldenLogs are the logs written by -update.
func goldenLogs() []struct {
	file   string
	log    func() []byte
	pcrs   map[int][]byte
	refuse firmware.Reason
} {
	type g = struct {
		file   string
		log    func() []byte
		pcrs   map[int][]byte
		refuse firmware.Reason
	}
	def := elt.New(nil)
	off := elt.New(&elt.Options{SecureBootDisabled: true})
	both := elt.New(&elt.Options{SHA1: true})
	return []g{
		{"eventlog-default.bin", def.Bytes, def.PCRs(), 0},
		{"eventlog-secureboot-off.bin", off.Bytes, off.PCRs(), 0},
		{"eventlog-sha1-sha256.bin", both.Bytes, both.PCRs(), 0},
		{"eventlog-legacy-sha1.bin", def.LegacyBytes, def.PCRs(), firmware.ReasonEventLogMismatch},
	}
}

func hexPCRs(m map[int][]byte) map[string]string {
	out := make(map[string]string, len(m))
	for i, d := range m {
		out[strconv.Itoa(i)] = hex.EncodeToString(d)
	}
	return out
}

func parsePCRs(t *testing.T, m map[string]string) map[int][]byte {
	t.Helper()
	out := make(map[int][]byte, len(m))
	for k, v := range m {
		i, err := strconv.Atoi(k)
		if err != nil {
			t.Fatalf("PCR index %q: %v", k, err)
		}
		if out[i], err = hex.DecodeString(v); err != nil {
			t.Fatalf("PCR %d: %v", i, err)
		}
	}
	return out
}

func writeGolden(t *testing.T) {
	var manifest []golden
	for _, g := range goldenLogs() {
		b := g.log()
		if err := os.WriteFile(filepath.Join("testdata", g.file), b, 0o644); err != nil {
			t.Fatal(err)
		}
		e := golden{File: g.file, PCRs: hexPCRs(g.pcrs)}
		lg, err := firmware.ParseMeasurements(b)
		if err != nil {
			t.Fatal(err)
		}
		m, err := lg.Replay(g.pcrs, nil)
		if g.refuse != 0 {
			e.Refused = firmware.ReasonOf(err).String()
		} else if err != nil {
			t.Fatal(err)
		} else {
			e.FirmwareDigest, e.FirmwareVersion, e.SecureBoot = m.FirmwareDigest(), m.FirmwareVersion(), m.SecureBootEnabled()
		}
		manifest = append(manifest, e)
		writeFuzzSeed(t, "golden-"+g.file, b)
	}
	j, err := json.MarshalIndent(manifest, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goldenManifest, append(j, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}

	// Edge seeds for the fuzzer.
	def := elt.New(nil).Bytes()
	writeFuzzSeed(t, "truncated-header", def[:40])
	writeFuzzSeed(t, "truncated-event", def[:len(def)-5])
	writeFuzzSeed(t, "header-only", def[:32+binary.LittleEndian.Uint32(def[28:32])])
	writeFuzzSeed(t, "garbage", []byte("\x00\x00\x00\x00\x03\x00\x00\x00garbage that is not an event log"))
}

// writeFuzzSeed writes a seed in the corpus format of go test -fuzz.
func writeFuzzSeed(t *testing.T, name string, b []byte) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", "FuzzParseMeasurements")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(b)))
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGolden checks that the committed logs still parse and replay to the
// committed values, and that the generator still describes the same default
// firmware (its FirmwareDigest is a reference value other tests and demos
// may register).
func TestGolden(t *testing.T) {
	if *update {
		writeGolden(t)
	}
	j, err := os.ReadFile(goldenManifest)
	if err != nil {
		t.Fatalf("%v (run go test ./firmware -run TestGolden -update)", err)
	}
	var manifest []golden
	if err := json.Unmarshal(j, &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest) != len(goldenLogs()) {
		t.Fatalf("%s lists %d logs, want %d (run -update)", goldenManifest, len(manifest), len(goldenLogs()))
	}
	for _, g := range manifest {
		t.Run(g.File, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", g.File))
			if err != nil {
				t.Fatal(err)
			}
			lg, err := firmware.ParseMeasurements(b)
			if err != nil {
				t.Fatalf("ParseMeasurements: %v", err)
			}
			m, err := lg.Replay(parsePCRs(t, g.PCRs), nil)
			if g.Refused != "" {
				if got := firmware.ReasonOf(err).String(); got != g.Refused {
					t.Fatalf("Replay: %v, want refusal %s", err, g.Refused)
				}
				return
			}
			if err != nil {
				t.Fatalf("Replay: %v", err)
			}
			if got := m.FirmwareDigest(); got != g.FirmwareDigest {
				t.Errorf("FirmwareDigest = %s, want %s", got, g.FirmwareDigest)
			}
			if got := m.FirmwareVersion(); got != g.FirmwareVersion {
				t.Errorf("FirmwareVersion = %q, want %q", got, g.FirmwareVersion)
			}
			if got := m.SecureBootEnabled(); got != g.SecureBoot {
				t.Errorf("SecureBootEnabled = %v, want %v", got, g.SecureBoot)
			}
		})
	}
	if got, want := defaultReference(t).FirmwareDigest, manifest[0].FirmwareDigest; got != want {
		t.Errorf("the generator's default firmware digest is %s, the golden log's %s: the generator changed (run -update if intended)", got, want)
	}
}
