package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/edgeenroll/edgeenroll/api"
)

// Exit codes; see the package doc.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitUnavailable = 3
	exitAuth        = 4
	exitInvalid     = 5
	exitNotFound    = 6
	exitConflict    = 7
	exitPartial     = 8
)

// exitError carries an exit code; silent ones were reported already.
type exitError struct {
	code   int
	err    error
	silent bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(err error) error { return &exitError{code: exitUsage, err: err} }

// exitCode maps an error to the documented exit codes.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return codeExit(ae.Code)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &ne) || errors.As(err, &oe) || errors.Is(err, context.DeadlineExceeded) {
		return exitUnavailable
	}
	return exitFailure
}

func codeExit(c api.Code) int {
	switch c {
	case api.CodeUnauthenticated, api.CodeForbidden:
		return exitAuth
	case api.CodeBadRequest:
		return exitInvalid
	case api.CodeNotFound:
		return exitNotFound
	case api.CodeConflict:
		return exitConflict
	case api.CodeBusy, api.CodeUnavailable, api.CodeInternal:
		return exitUnavailable
	}
	return exitFailure
}

// globals are the settings every command shares.
type globals struct {
	server     string
	adminDir   string
	output     string
	timeout    time.Duration
	configFile string

	client *http.Client
}

// fileConfig is the config file's shape.
type fileConfig struct {
	Server   string `yaml:"server"`
	AdminDir string `yaml:"admin_dir"`
	Output   string `yaml:"output"`
	Timeout  string `yaml:"timeout"`
}

const (
	defaultServer   = "https://localhost:8443"
	defaultAdminDir = "enrolld-data/admin"
)

func (g *globals) register(root *cobra.Command) {
	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", defaultServer, "enrolld base URL (env ENROLLCTL_SERVER)")
	pf.StringVar(&g.adminDir, "admin-dir", defaultAdminDir, "credential directory with ca.crt, operator.crt, operator.key (env ENROLLCTL_ADMIN_DIR)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml (env ENROLLCTL_OUTPUT)")
	pf.DurationVar(&g.timeout, "timeout", 60*time.Second, "time limit for each call")
	pf.StringVar(&g.configFile, "config", "", "config file (default $XDG_CONFIG_HOME/enrollctl/config.yaml)")
}

// defaultConfigPath is $XDG_CONFIG_HOME/enrollctl/config.yaml, falling back
// to ~/.config as the XDG base directory spec says.
func defaultConfigPath() string {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "enrollctl", "config.yaml")
}

// resolve applies flag > environment > config file > default.
func (g *globals) resolve(cmd *cobra.Command) error {
	fl := cmd.Flags()
	var fc fileConfig
	path, explicit := g.configFile, g.configFile != ""
	if !explicit {
		path = defaultConfigPath()
	}
	if path != "" {
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			dec := yaml.NewDecoder(bytes.NewReader(b))
			dec.KnownFields(true)
			if err := dec.Decode(&fc); err != nil && !errors.Is(err, io.EOF) {
				return usageErr(fmt.Errorf("config file %s: %v (keys: server, admin_dir, output, timeout)", path, err))
			}
		case errors.Is(err, fs.ErrNotExist) && !explicit:
		default:
			return usageErr(fmt.Errorf("reading config file: %w", err))
		}
	}
	pick := func(flag string, cur *string, env, file string) {
		if fl.Changed(flag) {
			return
		}
		if v := os.Getenv(env); v != "" {
			*cur = v
		} else if file != "" {
			*cur = file
		}
	}
	pick("server", &g.server, "ENROLLCTL_SERVER", fc.Server)
	pick("admin-dir", &g.adminDir, "ENROLLCTL_ADMIN_DIR", fc.AdminDir)
	pick("output", &g.output, "ENROLLCTL_OUTPUT", fc.Output)
	if !fl.Changed("timeout") && fc.Timeout != "" {
		d, err := time.ParseDuration(fc.Timeout)
		if err != nil {
			return usageErr(fmt.Errorf("config file %s: timeout: %v", path, err))
		}
		g.timeout = d
	}
	switch g.output {
	case "table", "json", "yaml":
	default:
		return usageErr(fmt.Errorf("--output must be table, json or yaml, got %q", g.output))
	}
	u, err := url.Parse(g.server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return usageErr(fmt.Errorf("--server %q must be an https:// URL such as https://enroll.example:8443", g.server))
	}
	g.server = strings.TrimRight(g.server, "/")
	return nil
}

// httpClient loads the operator credential once.
func (g *globals) httpClient() (*http.Client, error) {
	if g.client != nil {
		return g.client, nil
	}
	caPEM, err := os.ReadFile(filepath.Join(g.adminDir, "ca.crt"))
	if err != nil {
		return nil, &exitError{code: exitAuth, err: fmt.Errorf("reading the server CA from --admin-dir %s: %w", g.adminDir, err)}
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, &exitError{code: exitAuth, err: fmt.Errorf("%s holds no PEM certificate", filepath.Join(g.adminDir, "ca.crt"))}
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(g.adminDir, "operator.crt"), filepath.Join(g.adminDir, "operator.key"))
	if err != nil {
		return nil, &exitError{code: exitAuth, err: fmt.Errorf("loading the operator certificate from --admin-dir %s: %w", g.adminDir, err)}
	}
	g.client = &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 2,
	}}
	return g.client, nil
}

// call sends one admin request and decodes a 200 into resp.
func (g *globals) call(ctx context.Context, method, path string, query url.Values, req, resp any) error {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	client, err := g.httpClient()
	if err != nil {
		return err
	}
	var body io.Reader
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	target := g.server + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	hreq, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return err
	}
	if req != nil {
		hreq.Header.Set("Content-Type", api.ContentTypeJSON)
	}
	hresp, err := client.Do(hreq)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && strings.Contains(err.Error(), "tls:") {
			return &exitError{code: exitAuth, err: fmt.Errorf("TLS with enrolld at %s failed (is --admin-dir a credential of this server?): %w", g.server, err)}
		}
		return &exitError{code: exitUnavailable, err: fmt.Errorf("calling enrolld at %s: %w", g.server, err)}
	}
	defer hresp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(hresp.Body, api.MaxAdminResponseBytes))
	if err != nil {
		return &exitError{code: exitUnavailable, err: fmt.Errorf("reading the answer of enrolld: %w", err)}
	}
	if hresp.StatusCode != http.StatusOK {
		var ae api.Error
		if json.Unmarshal(raw, &ae) == nil && ae.Code != "" {
			return &ae
		}
		return &exitError{code: exitFailure, err: fmt.Errorf("enrolld answered HTTP %d", hresp.StatusCode)}
	}
	if resp == nil {
		return nil
	}
	return json.Unmarshal(raw, resp)
}

// list follows next_page_token until the listing ends or limit items
// (0: no limit) are read.
func list[T any](ctx context.Context, g *globals, path string, q url.Values, limit int, items func(*T) int, next func(*T) string) ([]*T, error) {
	var pages []*T
	n := 0
	for {
		if limit > 0 {
			q.Set("limit", fmt.Sprint(min(limit-n, api.MaxPageSize)))
		}
		page := new(T)
		if err := g.call(ctx, http.MethodGet, path, q, nil, page); err != nil {
			return nil, err
		}
		pages = append(pages, page)
		n += items(page)
		tok := next(page)
		if tok == "" || (limit > 0 && n >= limit) {
			return pages, nil
		}
		q.Set("after", tok)
	}
}
