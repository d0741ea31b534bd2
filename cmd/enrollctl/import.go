package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgeenroll/edgeenroll/api"
)

// importColumns are the columns (CSV header) and keys (JSON lines) of an
// import file.
var importColumns = []string{"ek_cert_pem", "ek_hash", "serial", "group", "labels"}

// abortTimeout bounds the abort of an import that failed or was
// interrupted.
const abortTimeout = 10 * time.Second

func importCmd(g *globals) *cobra.Command {
	var partial, dryRun, listOpen bool
	var format, abortID string
	cmd := &cobra.Command{
		Use:   "import FILE",
		Short: "Pre-register a factory batch from CSV or JSON lines, all or nothing",
		Long: `Import pre-registers TPM identities from a file: CSV with a header row, or
JSON lines (one object per line). Columns / keys:

  ek_cert_pem  the EK certificate, PEM (quote it in CSV: it spans lines)
  ek_hash      the device ID: hex SHA-256 of the EK public key (PKIX DER)
               (one of ek_cert_pem and ek_hash is required; with both, they must agree)
  serial       the device's serial number (required; unique: pinned to its EK)
  group        the device's group (optional; default: the server's default group)
  labels       key=value pairs separated by ';' (JSON lines: an object)

Every row is checked here and again by enrolld; each bad row is reported
with its line number and reason. By default nothing is imported if any row
is bad (one transaction); --partial imports the good rows. Importing the same
file again changes nothing. Large files are sent in chunks that enrolld
stages and then commits in one transaction.

--list shows the staged imports still open (your own; an admin's shows
every operator's), each holding a slot until it is committed, aborted or
expires; --abort ID frees one.`,
		Example: `  enrollctl import batch-2026-07.csv
  enrollctl import batch.jsonl --dry-run
  enrollctl import batch.csv --partial -o json
  enrollctl import --list            # staged imports still open, oldest first
  enrollctl import --abort 3f2a...   # a staged import left by a station that died`,
		Args: cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if listOpen {
				if len(args) != 0 || abortID != "" {
					return usageErr(errors.New("--list takes no FILE and no --abort: list first, then abort by ID"))
				}
				return listImports(cmd, g)
			}
			if abortID != "" {
				if len(args) != 0 {
					return usageErr(errors.New("give a FILE to import or --abort ID, not both"))
				}
				if err := g.call(cmd.Context(), http.MethodDelete, api.PathAdminImports+"/"+url.PathEscape(abortID), nil, nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "aborted import %s\n", abortID)
				return nil
			}
			if len(args) != 1 {
				return usageErr(errors.New("give the FILE to import (or --list, or --abort ID)"))
			}
			return runImport(cmd, g, args[0], format, partial, dryRun)
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&partial, "partial", false, "import the good rows even if some are bad")
	fl.BoolVar(&dryRun, "dry-run", false, "check every row against enrolld, import nothing")
	fl.StringVar(&format, "format", "", "csv or jsonl (default: from the file name, else from its first byte)")
	fl.StringVar(&abortID, "abort", "", "abort the staged import with this ID (its starter's, or anyone's for an admin), freeing its slot; --list shows the IDs")
	fl.BoolVar(&listOpen, "list", false, "list the staged imports still open (yours; an admin's: everyone's), oldest first")
	return cmd
}

// listImports prints the staged imports still open.
func listImports(cmd *cobra.Command, g *globals) error {
	var l api.ImportList
	if err := g.call(cmd.Context(), http.MethodGet, api.PathAdminImports, nil, nil, &l); err != nil {
		return err
	}
	if l.Imports == nil {
		l.Imports = []api.ImportSummary{}
	}
	return render(g, cmd.OutOrStdout(), l, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "IMPORT ID\tOPERATOR\tSOURCE\tCREATED\tEXPIRES")
		for _, i := range l.Imports {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", i.ImportID, i.Operator, dash(i.Source), ts(i.CreatedAt), ts(i.ExpiresAt))
		}
	})
}

// fileRow is one data row of an import file.
type fileRow struct {
	row api.ImportRow
	err error
}

func runImport(cmd *cobra.Command, g *globals, path, format string, partial, dryRun bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return usageErr(err)
	}
	if format == "" {
		format = detectFormat(path, data)
	}
	var rows []fileRow
	switch format {
	case "csv":
		rows, err = parseCSV(data)
	case "jsonl":
		rows, err = parseJSONL(data)
	default:
		return usageErr(fmt.Errorf("--format must be csv or jsonl, got %q", format))
	}
	if err != nil {
		return &exitError{code: exitInvalid, err: fmt.Errorf("%s: %w", path, err)}
	}
	if len(rows) == 0 {
		return &exitError{code: exitInvalid, err: fmt.Errorf("%s has no data rows", path)}
	}
	if len(rows) > api.MaxImportRows {
		return &exitError{code: exitInvalid, err: fmt.Errorf("%s has %d rows; an import holds at most %d: split the file", path, len(rows), api.MaxImportRows)}
	}
	checkRows(rows)

	var good []api.ImportRow
	var rejected []api.RowError
	for _, r := range rows {
		if r.err != nil {
			rejected = append(rejected, rowError(r.row.Line, r.err))
		} else {
			good = append(good, r.row)
		}
	}
	sum := sha256.Sum256(data)
	res := &api.ImportResult{DryRun: dryRun, Partial: partial}
	if len(good) > 0 {
		// Even with bad rows, enrolld checks the good ones (and refuses
		// the import if it is all or nothing), so every problem is
		// reported at once.
		var start api.ImportStartResponse
		if err := g.call(cmd.Context(), http.MethodPost, api.PathAdminImports, nil,
			&api.ImportStartRequest{Source: filepath.Base(path), SHA256: hex.EncodeToString(sum[:]), Partial: partial, DryRun: dryRun}, &start); err != nil {
			return err
		}
		if g.output != "json" { // JSON output carries import_id
			fmt.Fprintf(cmd.ErrOrStderr(), "import %s staged (enrollctl import --abort %s frees it if this command dies)\n", start.ImportID, start.ImportID)
		}
		abort := func() {
			// Also after Ctrl-C (which ends cmd.Context()): an import
			// left staged holds a slot until it expires.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(cmd.Context()), abortTimeout)
			defer cancel()
			_ = g.call(ctx, http.MethodDelete, api.PathAdminImports+"/"+start.ImportID, nil, nil, nil)
		}
		for _, chunk := range chunks(good, start.MaxRowsPerChunk, start.MaxChunkBytes) {
			var resp api.ImportRowsResponse
			if err := g.call(cmd.Context(), http.MethodPost, api.PathAdminImports+"/"+start.ImportID+"/rows", nil, &api.ImportRowsRequest{Rows: chunk}, &resp); err != nil {
				abort()
				return err
			}
		}
		if err := g.call(cmd.Context(), http.MethodPost, api.PathAdminImports+"/"+start.ImportID+"/commit", nil,
			&api.ImportCommitRequest{ClientRejected: len(rejected)}, res); err != nil {
			abort()
			return err
		}
	}
	// Merge the client's and the server's row errors.
	all := append(rejected, res.Rejected...)
	slices.SortFunc(all, func(a, b api.RowError) int { return a.Line - b.Line })
	all = slices.CompactFunc(all, func(a, b api.RowError) bool { return a.Line == b.Line && a.Reason == b.Reason })
	res.Rows = len(rows)
	res.RejectedTotal = len(rejected) + res.RejectedTotal
	res.Rejected = all[:min(len(all), api.MaxReportedRowErrors)]

	if err := render(g, cmd.OutOrStdout(), res, func(tw *tabwriter.Writer) {
		w := cmd.OutOrStdout()
		for _, e := range res.Rejected {
			fmt.Fprintf(w, "%s:%d: %s: %s\n", path, e.Line, e.Code, e.Reason)
		}
		if res.RejectedTotal > len(res.Rejected) {
			fmt.Fprintf(w, "... and %d more bad rows\n", res.RejectedTotal-len(res.Rejected))
		}
		verb := "imported"
		switch {
		case dryRun:
			verb = "would import (dry run, nothing written)"
		case res.RejectedTotal > 0 && !partial:
			verb = "not imported (fix the rows above, or use --partial to import the good ones)"
		}
		fmt.Fprintf(w, "%s %s: %d rows, %d new, %d changed, %d unchanged, %d bad\n", path, verb, res.Rows, res.Created, res.Updated, res.Unchanged, res.RejectedTotal)
		if res.Created+res.Updated == 0 && res.RejectedTotal == 0 && !dryRun {
			fmt.Fprintln(w, "nothing to do: every row is registered already")
		}
		if len(res.UndefinedGroups) > 0 {
			fmt.Fprintf(w, "warning: groups %s have no record and get the server's default policy (enrollctl groups set)\n", strings.Join(res.UndefinedGroups, ", "))
		}
	}); err != nil {
		return err
	}
	switch {
	case res.RejectedTotal == 0:
		return nil
	case partial && !dryRun && res.Created+res.Updated+res.Unchanged > 0:
		return &exitError{code: exitPartial, err: fmt.Errorf("%d of %d rows were bad and skipped", res.RejectedTotal, res.Rows), silent: true}
	}
	return &exitError{code: exitInvalid, err: fmt.Errorf("%d of %d rows are bad; nothing was imported", res.RejectedTotal, res.Rows), silent: true}
}

func rowError(line int, err error) api.RowError {
	var ae *api.Error
	if errors.As(err, &ae) {
		return api.RowError{Line: line, Code: ae.Code, Reason: ae.Message}
	}
	return api.RowError{Line: line, Code: api.CodeBadRequest, Reason: err.Error()}
}

func detectFormat(path string, data []byte) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".csv":
		return "csv"
	case ".jsonl", ".ndjson":
		return "jsonl"
	}
	if t := bytes.TrimLeft(data, " \t\r\n\ufeff"); len(t) > 0 && t[0] == '{' {
		return "jsonl"
	}
	return "csv"
}

// parseCSV reads a CSV file with a header row. A row's line is the line it
// starts on (an EK certificate cell spans several).
func parseCSV(data []byte) ([]fileRow, error) {
	r := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(data, []byte("\ufeff"))))
	r.ReuseRecord = false
	header, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("reading the header row: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(h))
		if h == "device_id" {
			h = "ek_hash"
		}
		if !slices.Contains(importColumns, h) {
			return nil, fmt.Errorf("line 1: unknown column %q; columns are %s", header[i], strings.Join(importColumns, ", "))
		}
		if _, dup := col[h]; dup {
			return nil, fmt.Errorf("line 1: column %q appears twice", h)
		}
		col[h] = i
	}
	_, hasCert := col["ek_cert_pem"]
	_, hasHash := col["ek_hash"]
	if !hasCert && !hasHash {
		return nil, errors.New("line 1: the header needs an ek_cert_pem or an ek_hash column")
	}
	if _, ok := col["serial"]; !ok {
		return nil, errors.New("line 1: the header needs a serial column")
	}
	get := func(rec []string, name string) string {
		if i, ok := col[name]; ok && i < len(rec) {
			return rec[i]
		}
		return ""
	}
	var rows []fileRow
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return rows, nil
		}
		line, _ := r.FieldPos(0)
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			if pe.Err == csv.ErrFieldCount {
				rows = append(rows, fileRow{row: api.ImportRow{Line: pe.StartLine}, err: fmt.Errorf("has %d fields, the header has %d", len(rec), len(header))})
				continue
			}
			return rows, fmt.Errorf("line %d: %v (quote cells that hold commas, quotes or line breaks)", pe.StartLine, pe.Err)
		}
		if err != nil {
			return rows, err
		}
		fr := fileRow{row: api.ImportRow{Line: line, Serial: strings.TrimSpace(get(rec, "serial")),
			Group: strings.TrimSpace(get(rec, "group")), DeviceID: strings.TrimSpace(get(rec, "ek_hash"))}}
		if fr.row.Labels, fr.err = api.ParseLabels(get(rec, "labels"), ";"); fr.err == nil {
			fr.row.EKCertificate, fr.err = pemCertificate(get(rec, "ek_cert_pem"))
		}
		rows = append(rows, fr)
	}
}

// jsonlRow is one JSON line.
type jsonlRow struct {
	EKCertPEM string            `json:"ek_cert_pem"`
	EKHash    string            `json:"ek_hash"`
	Serial    string            `json:"serial"`
	Group     string            `json:"group"`
	Labels    map[string]string `json:"labels"`
}

func parseJSONL(data []byte) ([]fileRow, error) {
	var rows []fileRow
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := bytes.TrimSpace(sc.Bytes())
		if line == 1 {
			text = bytes.TrimPrefix(text, []byte("\ufeff"))
		}
		if len(text) == 0 {
			continue
		}
		var jr jsonlRow
		dec := json.NewDecoder(bytes.NewReader(text))
		dec.DisallowUnknownFields()
		fr := fileRow{row: api.ImportRow{Line: line}}
		if err := dec.Decode(&jr); err != nil {
			fr.err = fmt.Errorf("not a JSON object of %s: %v", strings.Join(importColumns, ", "), err)
		} else if dec.More() {
			fr.err = errors.New("more than one JSON value on the line")
		} else {
			fr.row.DeviceID, fr.row.Serial, fr.row.Group, fr.row.Labels = jr.EKHash, jr.Serial, jr.Group, jr.Labels
			fr.row.EKCertificate, fr.err = pemCertificate(jr.EKCertPEM)
		}
		rows = append(rows, fr)
	}
	if err := sc.Err(); err != nil {
		return rows, fmt.Errorf("line %d: %w", line+1, err)
	}
	return rows, nil
}

// pemCertificate decodes exactly one PEM certificate ("" is none).
func pemCertificate(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	blk, rest := pem.Decode([]byte(s))
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("ek_cert_pem is not a PEM CERTIFICATE block")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("ek_cert_pem holds more than one PEM block")
	}
	return blk.Bytes, nil
}

// checkRows validates each row as enrolld will, and catches devices and
// serials repeated within the file.
func checkRows(rows []fileRow) {
	byDevice := map[string]int{}
	bySerial := map[string]int{}
	for i := range rows {
		r := &rows[i]
		if r.err != nil {
			continue
		}
		if err := api.ValidateImportRow(&r.row); err != nil {
			r.err = err
			continue
		}
		id := r.row.DeviceID
		if len(r.row.EKCertificate) > 0 {
			c, err := x509.ParseCertificate(r.row.EKCertificate)
			if err != nil {
				r.err = fmt.Errorf("EK certificate does not parse: %v", err)
				continue
			}
			certID := sha256Hex(c.RawSubjectPublicKeyInfo)
			if id != "" && id != certID {
				r.err = fmt.Errorf("ek_hash %s is not the hash of the EK certificate's key (%s)", id, certID)
				continue
			}
			id = certID
		}
		if l, dup := byDevice[id]; dup {
			r.err = fmt.Errorf("device %s is already on line %d", id, l)
			continue
		}
		if l, dup := bySerial[r.row.Serial]; dup {
			r.err = &api.Error{Code: api.CodeConflict, Message: fmt.Sprintf("serial %s is already on line %d for another device", r.row.Serial, l)}
			continue
		}
		byDevice[id], bySerial[r.row.Serial] = r.row.Line, r.row.Line
	}
}

// chunks splits rows into requests of at most maxRows rows and about
// maxBytes of JSON.
func chunks(rows []api.ImportRow, maxRows, maxBytes int) [][]api.ImportRow {
	if maxRows <= 0 || maxRows > api.MaxImportRowsPerChunk {
		maxRows = api.MaxImportRowsPerChunk
	}
	if maxBytes <= 0 || maxBytes > api.MaxImportChunkBytes {
		maxBytes = api.MaxImportChunkBytes
	}
	var out [][]api.ImportRow
	start, size := 0, 0
	for i, r := range rows {
		est := 200 + len(r.DeviceID) + len(r.Serial) + len(r.Group) + 4*len(r.EKCertificate)/3
		for k, v := range r.Labels {
			est += len(k) + len(v) + 6
		}
		if i > start && (i-start == maxRows || size+est > maxBytes) {
			out = append(out, rows[start:i])
			start, size = i, 0
		}
		size += est
	}
	return append(out, rows[start:])
}
