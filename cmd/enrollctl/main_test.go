package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/edgeenroll/edgeenroll/api"
)

// TestSettingsPrecedence: flag > environment > config file > default.
func TestSettingsPrecedence(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "enrollctl"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := "server: https://from-file:1\nadmin_dir: /file\noutput: yaml\n"
	if err := os.WriteFile(filepath.Join(dir, "enrollctl", "config.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("XDG_CONFIG_HOME", dir)
	for _, tt := range []struct {
		name                  string
		env                   map[string]string
		args                  []string
		server, admin, output string
	}{
		{"file", nil, nil, "https://from-file:1", "/file", "yaml"},
		{"env over file", map[string]string{"ENROLLCTL_SERVER": "https://from-env:2", "ENROLLCTL_ADMIN_DIR": "/env"}, nil, "https://from-env:2", "/env", "yaml"},
		{"flag over env", map[string]string{"ENROLLCTL_SERVER": "https://from-env:2"}, []string{"--server", "https://from-flag:3", "-o", "json"}, "https://from-flag:3", "/file", "json"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"ENROLLCTL_SERVER", "ENROLLCTL_ADMIN_DIR", "ENROLLCTL_OUTPUT"} {
				t.Setenv(k, tt.env[k])
			}
			g := &globals{}
			root := &cobra.Command{Use: "t"}
			g.register(root)
			if err := root.ParseFlags(tt.args); err != nil {
				t.Fatal(err)
			}
			if err := g.resolve(root); err != nil {
				t.Fatal(err)
			}
			if g.server != tt.server || g.adminDir != tt.admin || g.output != tt.output {
				t.Errorf("got %s %s %s, want %s %s %s", g.server, g.adminDir, g.output, tt.server, tt.admin, tt.output)
			}
		})
	}
	// Unknown keys in the file are usage errors.
	os.WriteFile(filepath.Join(dir, "enrollctl", "config.yaml"), []byte("sever: x\n"), 0o600)
	g := &globals{}
	root := &cobra.Command{Use: "t"}
	g.register(root)
	if err := g.resolve(root); exitCode(err) != exitUsage {
		t.Errorf("unknown config key: %v (exit %d)", err, exitCode(err))
	}
}

func TestExitCodes(t *testing.T) {
	for code, want := range map[api.Code]int{
		api.CodeForbidden: exitAuth, api.CodeUnauthenticated: exitAuth, api.CodeBadRequest: exitInvalid,
		api.CodeNotFound: exitNotFound, api.CodeConflict: exitConflict, api.CodeBusy: exitUnavailable, api.CodeRevoked: exitFailure,
	} {
		if got := exitCode(&api.Error{Code: code}); got != want {
			t.Errorf("%s: exit %d, want %d", code, got, want)
		}
	}
	if exitCode(nil) != 0 || exitCode(errors.New("x")) != exitFailure {
		t.Error("nil or plain error")
	}
}

func TestYAMLKeepsJSONOrder(t *testing.T) {
	g := &globals{output: "yaml"}
	var b bytes.Buffer
	if err := render(g, &b, struct {
		Z string         `json:"z"`
		A []int          `json:"a"`
		M map[string]any `json:"m"`
	}{"zz", []int{1, 2}, map[string]any{"k": true, "n": nil}}, nil); err != nil {
		t.Fatal(err)
	}
	want := "z: zz\na:\n  - 1\n  - 2\nm:\n  k: true\n  n: null\n"
	if b.String() != want {
		t.Errorf("yaml:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestParseImportFiles(t *testing.T) {
	id := strings.Repeat("a", 64)
	rows, err := parseCSV([]byte("ek_hash,serial,group,labels\n" + id + ",SN1,g,a=1;b=2\n" + id + ",SN2\n" + "x,SN3,g,\n"))
	if err != nil {
		t.Fatal(err)
	}
	checkRows(rows)
	if len(rows) != 3 || rows[0].err != nil || rows[0].row.Labels["b"] != "2" || rows[0].row.Line != 2 {
		t.Fatalf("row 1 = %+v", rows[0])
	}
	if rows[1].err == nil || !strings.Contains(rows[1].err.Error(), "fields") || rows[1].row.Line != 3 {
		t.Errorf("short row = %+v", rows[1])
	}
	if rows[2].err == nil || rows[2].row.Line != 4 {
		t.Errorf("bad hash row = %+v", rows[2])
	}
	if _, err := parseCSV([]byte("ek_hash,serial,owner\n")); err == nil || !strings.Contains(err.Error(), `unknown column "owner"`) {
		t.Errorf("unknown column: %v", err)
	}
	rows, err = parseJSONL([]byte(`{"ek_hash":"` + id + `","serial":"S"}` + "\n\n" + `{"ek_hash":"` + id + `","serial":"T","x":1}` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	checkRows(rows)
	if len(rows) != 2 || rows[0].err != nil || rows[1].row.Line != 3 || rows[1].err == nil {
		t.Fatalf("jsonl rows = %+v", rows)
	}
	if c := chunks(make([]api.ImportRow, 12001), 5000, 1<<30); len(c) != 3 || len(c[2]) != 2001 {
		t.Errorf("chunks = %d", len(c))
	}
}
