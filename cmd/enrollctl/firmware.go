package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/edgeenroll/edgeenroll/api"
)

func firmwareCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "firmware",
		Short: "Approved firmware of each group, for measured boot: add, list, retire",
		Long: `A group whose measured boot is enforced (enrollctl groups set G --measured-boot enforce)
admits a device only if the firmware digest of its replayed TCG event log is one of
the group's approved references. The digest is what "enrollctl devices get" shows
under Firmware; the easiest way to approve firmware is to learn it from a golden
device that tried to enroll (--from-device).`,
	}
	cmd.AddCommand(firmwareAddCmd(g), firmwareListCmd(g), firmwareRetireCmd(g))
	return cmd
}

func printFirmware(g *globals, cmd *cobra.Command, v any, refs []api.FirmwareReference, summary string) error {
	return render(g, cmd.OutOrStdout(), v, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "GROUP\tDIGEST\tNAME\tVERSION\tLEARNT FROM\tADDED\tSTATUS")
		for _, r := range refs {
			status := "active"
			if !r.RetiredAt.IsZero() {
				status = fmt.Sprintf("retired %s by %s", ts(r.RetiredAt), r.RetiredBy)
				if r.RetireReason != "" {
					status += ": " + r.RetireReason
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s by %s\t%s\n", r.Group, r.Digest, r.Name, dash(r.Version), dash(short(r.SourceDevice)),
				ts(r.CreatedAt), r.CreatedBy, status)
		}
		if summary != "" {
			fmt.Fprintln(tw, summary)
		}
	})
}

func firmwareAddCmd(g *globals) *cobra.Command {
	var group, fromDevice, digest, name, file, comment string
	cmd := &cobra.Command{
		Use:   "add --group G (--from-device ID [--name N] | --digest HEX --name N | --file FILE)",
		Short: "Approve firmware for a group: learn it from a golden device, or give digests",
		Long: `add approves firmware digests for a group, all or nothing.

--from-device takes the last verified measurement of a device (one that sent a
TCG event log that replayed to its quote, whether or not it was admitted).
--digest approves one digest. --file reads many: a JSON array of objects with
"digest" and "name", the output of "enrollctl firmware list -o json", or a text
file with one "DIGEST [NAME]" per line ('#' starts a comment; a line without a
name gets "firmware <first 12 hex digits>", or --name and those digits).

An approved digest added again keeps its record (a new name renames it); a
retired one is reactivated. Names are unique among a group's active references.`,
		Example: `  enrollctl firmware add --group line-a --from-device 3f2a...e1 --name "acme-gw fw 1.4.2"
  enrollctl firmware add --group line-a --digest 9c1e...77 --name "acme-gw fw 1.5.0"
  enrollctl firmware add --group line-a --file approved-firmware.txt --comment "vendor release 2026-07"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := api.FirmwareAddRequest{Group: group, Comment: comment}
			switch {
			case fromDevice != "":
				req.FromDevice, req.Name = fromDevice, name
			case digest != "":
				if name == "" {
					return usageErr(errors.New("--digest needs --name: what operators will see for this firmware"))
				}
				req.References = []api.FirmwareDigest{{Digest: strings.ToLower(digest), Name: name}}
			default:
				refs, err := readFirmwareFile(cmd, file, name)
				if err != nil {
					return &exitError{code: exitInvalid, err: err}
				}
				req.References = refs
			}
			if err := req.Validate(); err != nil {
				if file != "" {
					return &exitError{code: exitInvalid, err: fmt.Errorf("%s: %w", file, err)}
				}
				return usageErr(err)
			}
			var resp api.FirmwareAddResponse
			if err := g.call(cmd.Context(), http.MethodPost, api.PathAdminFirmware, nil, &req, &resp); err != nil {
				return err
			}
			return printFirmware(g, cmd, resp, resp.References, fmt.Sprintf("\ngroup %s: %d added, %d reactivated, %d renamed, %d unchanged",
				resp.Group, resp.Added, resp.Reactivated, resp.Renamed, resp.Unchanged))
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&group, "group", "", "the group whose devices may boot this firmware")
	fl.StringVar(&fromDevice, "from-device", "", "learn the firmware a golden device last measured (its device ID)")
	fl.StringVar(&digest, "digest", "", "a firmware digest (64 hex characters, as `enrollctl devices get` shows)")
	fl.StringVar(&file, "file", "", "a JSON or text file of digests and names ('-' reads stdin)")
	fl.StringVar(&name, "name", "", "name of the firmware for operators (--digest: required; --from-device: default its version and the device)")
	fl.StringVar(&comment, "comment", "", "why, for the audit log")
	cmd.MarkFlagRequired("group")
	cmd.MarkFlagsOneRequired("from-device", "digest", "file")
	cmd.MarkFlagsMutuallyExclusive("from-device", "digest", "file")
	return cmd
}

// readFirmwareFile reads digests and names from a JSON or text file.
func readFirmwareFile(cmd *cobra.Command, path, namePrefix string) ([]api.FirmwareDigest, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), api.MaxAdminRequestBytes+1))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	if len(data) > api.MaxAdminRequestBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, api.MaxAdminRequestBytes)
	}
	t := bytes.TrimSpace(data)
	if len(t) > 0 && (t[0] == '[' || t[0] == '{') {
		return parseFirmwareJSON(path, t)
	}
	return parseFirmwareText(path, t, namePrefix)
}

// parseFirmwareJSON reads an array of references, or an object with a
// "references" array (what `enrollctl firmware list -o json` writes).
// Unknown fields are errors.
func parseFirmwareJSON(path string, b []byte) ([]api.FirmwareDigest, error) {
	var refs []api.FirmwareReference
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if b[0] == '[' {
		if err := dec.Decode(&refs); err != nil {
			return nil, fmt.Errorf("%s: %w (want [{\"digest\": ..., \"name\": ...}, ...])", path, err)
		}
	} else {
		var l api.FirmwareList
		if err := dec.Decode(&l); err != nil {
			return nil, fmt.Errorf("%s: %w (want {\"references\": [{\"digest\": ..., \"name\": ...}, ...]})", path, err)
		}
		refs = l.References
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: trailing data after the JSON value", path)
	}
	out := make([]api.FirmwareDigest, 0, len(refs))
	for i, r := range refs {
		if r.Digest == "" {
			return nil, fmt.Errorf("%s: entry %d has no digest", path, i)
		}
		out = append(out, api.FirmwareDigest{Digest: strings.ToLower(r.Digest), Name: r.Name})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no firmware", path)
	}
	return out, nil
}

// parseFirmwareText reads "DIGEST [NAME]" lines.
func parseFirmwareText(path string, b []byte, namePrefix string) ([]api.FirmwareDigest, error) {
	var out []api.FirmwareDigest
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for line := 1; sc.Scan(); line++ {
		l := strings.TrimSpace(sc.Text())
		if i := strings.Index(l, "#"); i >= 0 {
			l = strings.TrimSpace(l[:i])
		}
		if l == "" {
			continue
		}
		d, name, _ := strings.Cut(l, " ")
		d, name = strings.ToLower(strings.TrimSpace(d)), strings.TrimSpace(name)
		if !api.ValidFirmwareDigest(d) {
			return nil, fmt.Errorf("%s:%d: %q is not a firmware digest (64 hex characters)", path, line, d)
		}
		if name == "" {
			name = "firmware " + d[:12]
			if namePrefix != "" {
				name = namePrefix + " " + d[:12]
			}
		}
		out = append(out, api.FirmwareDigest{Digest: d, Name: name})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no firmware", path)
	}
	return out, nil
}

func firmwareListCmd(g *globals) *cobra.Command {
	var group string
	var retired bool
	var limit int
	cmd := &cobra.Command{
		Use:   "list [--group G] [--retired]",
		Short: "List approved firmware references (active ones; --retired adds retired ones)",
		Example: `  enrollctl firmware list
  enrollctl firmware list --group line-a --retired -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if group != "" {
				if err := api.ValidateGroupName(group); err != nil {
					return usageErr(err)
				}
			}
			q := url.Values{}
			setIf(q, "group", group)
			if retired {
				q.Set("retired", "true")
			}
			pages, err := list(cmd.Context(), g, api.PathAdminFirmware, q, limit,
				func(p *api.FirmwareList) int { return len(p.References) }, func(p *api.FirmwareList) string { return p.NextPageToken })
			if err != nil {
				return err
			}
			all := api.FirmwareList{References: []api.FirmwareReference{}}
			for _, p := range pages {
				all.References = append(all.References, p.References...)
			}
			if limit > 0 && len(all.References) > limit {
				all.References = all.References[:limit]
			}
			return printFirmware(g, cmd, all, all.References, "")
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "only this group's references")
	cmd.Flags().BoolVar(&retired, "retired", false, "include retired references")
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most this many (default: all)")
	return cmd
}

func firmwareRetireCmd(g *globals) *cobra.Command {
	var group, reason string
	cmd := &cobra.Command{
		Use:     "retire --group G DIGEST...",
		Short:   "Retire approved firmware: devices booting it are refused from their next enrollment or renewal on",
		Example: `  enrollctl firmware retire --group line-a 9c1e...77 --reason "CVE-2026-1234 in fw 1.4"`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.FirmwareRetireRequest{Group: group, Reason: reason}
			for _, a := range args {
				req.Digests = append(req.Digests, strings.ToLower(a))
			}
			if err := req.Validate(); err != nil {
				return usageErr(err)
			}
			var resp api.FirmwareRetireResponse
			if err := g.call(cmd.Context(), http.MethodPost, api.PathAdminFirmwareRetire, nil, &req, &resp); err != nil {
				return err
			}
			return render(g, cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "group %s: %d retired, %d already retired, %d active references left\n", resp.Group, resp.Retired, resp.Unchanged, resp.Active)
			})
		},
	}
	cmd.Flags().StringVar(&group, "group", "", "the group whose reference to retire")
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the record and the audit log")
	cmd.MarkFlagRequired("group")
	return cmd
}
