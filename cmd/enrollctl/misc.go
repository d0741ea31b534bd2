package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/internal/atomicfile"
	"github.com/edgeenroll/edgeenroll/pki"
)

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show enrolld's health and record counts",
		Example: `  enrollctl status
  enrollctl status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st api.StatusResponse
			if err := g.call(cmd.Context(), http.MethodGet, api.PathAdminStatus, nil, nil, &st); err != nil {
				return err
			}
			return render(g, cmd.OutOrStdout(), st, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "Server:\t%s (enrolld %s, trust domain %s)\n", g.server, st.Version, st.TrustDomain)
				fmt.Fprintf(tw, "Ready:\t%v\n", st.Ready)
				fmt.Fprintf(tw, "Closed mode:\t%v\n", st.ClosedMode)
				fmt.Fprintf(tw, "You are:\t%s\n", st.Operator)
				statuses := make([]string, 0, len(st.Devices))
				for _, s := range api.DeviceStatuses() {
					statuses = append(statuses, fmt.Sprintf("%s %d", s, st.Devices[s]))
				}
				fmt.Fprintf(tw, "Devices:\t%s\n", strings.Join(statuses, ", "))
				fmt.Fprintf(tw, "Pending cap:\t%d\n", st.MaxPending)
				fmt.Fprintf(tw, "Pre-registered:\t%d\n", st.Preregistered)
				fmt.Fprintf(tw, "Certificates:\t%d issued, %d revoked\n", st.Certificates, st.Revoked)
				fmt.Fprintf(tw, "CRL:\tnumber %d, next update %s\n", st.CRLNumber, ts(st.CRLNextUpdate))
				fmt.Fprintf(tw, "Audit records:\t%d\n", st.AuditRecords)
			})
		},
	}
}

func groupsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "groups", Short: "Device groups: admission policy, certificate lifetime, measured boot"}
	printGroups := func(cmd *cobra.Command, v any, gs []api.Group, def string) error {
		return render(g, cmd.OutOrStdout(), v, func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "GROUP\tADMISSION\tCERT LIFETIME\tMEASURED BOOT\tFIRMWARE\tCONFIG\tDEFINED\tDESCRIPTION")
			for _, gr := range gs {
				life := "default"
				if gr.CertLifetimeSeconds > 0 {
					life = (time.Duration(gr.CertLifetimeSeconds) * time.Second).String()
				}
				name := gr.Name
				if name == def {
					name += " (default)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d approved\t%d\t%v\t%s\n", name, gr.Admission, life, measuredBootText(&gr.GroupSpec),
					gr.FirmwareReferences, gr.ConfigVersion, gr.Defined, dash(gr.Description))
			}
		})
	}
	listC := &cobra.Command{
		Use:     "list",
		Short:   "List groups (every page)",
		Example: `  enrollctl groups list`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var all api.GroupList
			for q := (url.Values{}); ; {
				var l api.GroupList
				if err := g.call(cmd.Context(), http.MethodGet, api.PathAdminGroups, q, nil, &l); err != nil {
					return err
				}
				all.DefaultGroup, all.Groups = l.DefaultGroup, append(all.Groups, l.Groups...)
				if l.NextAfter == "" {
					break
				}
				if l.NextAfter <= q.Get("after") {
					return fmt.Errorf("the server's group pages do not advance (after %q)", l.NextAfter)
				}
				q.Set("after", l.NextAfter)
			}
			return printGroups(cmd, all, all.Groups, all.DefaultGroup)
		},
	}
	getC := &cobra.Command{
		Use:     "get GROUP",
		Short:   "Show a group (a group without a record shows the server's defaults)",
		Example: `  enrollctl groups get line-a`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var gr api.Group
			if err := g.call(cmd.Context(), http.MethodGet, api.PathAdminGroups+"/"+url.PathEscape(args[0]), nil, nil, &gr); err != nil {
				return err
			}
			return printGroups(cmd, gr, []api.Group{gr}, "")
		},
	}
	var admission, description, measuredBoot string
	var lifetime time.Duration
	var secureBoot bool
	var requirePCRs []int
	setC := &cobra.Command{
		Use:   "set GROUP [--admission auto|manual|deny] [--measured-boot off|enforce] [--require-secure-boot] ...",
		Short: "Create or change a group's policy (settings not given keep their value)",
		Example: `  enrollctl groups set line-a --admission manual --cert-lifetime 12h --description "Line A, first batch"
  enrollctl groups set quarantine --admission deny
  enrollctl groups set line-a --measured-boot enforce --require-secure-boot
  enrollctl groups set line-a --require-secure-boot=false`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := api.ValidateGroupName(args[0]); err != nil {
				return usageErr(err)
			}
			fl := cmd.Flags()
			changed := false
			for _, f := range []string{"admission", "cert-lifetime", "description", "measured-boot", "require-secure-boot", "require-pcrs"} {
				changed = changed || fl.Changed(f)
			}
			if !changed {
				return usageErr(errors.New("nothing to set: give --admission, --cert-lifetime, --description, --measured-boot, --require-secure-boot or --require-pcrs"))
			}
			// Start from the group as it is (or the server's defaults for
			// a group without a record): flags not given keep their value.
			var cur api.Group
			if err := g.call(cmd.Context(), http.MethodGet, api.PathAdminGroups+"/"+args[0], nil, nil, &cur); err != nil {
				return err
			}
			spec := cur.GroupSpec
			// Refused with conflict if someone changes the group between
			// this read and the write below.
			read := cur.UpdatedAt
			spec.ExpectUpdatedAt = &read
			if fl.Changed("admission") {
				spec.Admission = admission
			}
			if fl.Changed("cert-lifetime") {
				spec.CertLifetimeSeconds = int64(lifetime / time.Second)
			}
			if fl.Changed("description") {
				spec.Description = description
			}
			if fl.Changed("measured-boot") {
				spec.MeasuredBoot = measuredBoot
			}
			if fl.Changed("require-secure-boot") {
				spec.RequireSecureBoot = secureBoot
			}
			if fl.Changed("require-pcrs") {
				spec.RequiredPCRs = requirePCRs
			}
			if err := spec.Validate(); err != nil {
				return usageErr(err)
			}
			var gr api.Group
			if err := g.call(cmd.Context(), http.MethodPut, api.PathAdminGroups+"/"+args[0], nil, &spec, &gr); err != nil {
				return err
			}
			return printGroups(cmd, gr, []api.Group{gr}, "")
		},
	}
	setC.Flags().StringVar(&admission, "admission", "", "auto (EK chain or pre-registration admits), manual (pending until approved) or deny")
	setC.Flags().DurationVar(&lifetime, "cert-lifetime", 0, "device certificate lifetime (0: the server's)")
	setC.Flags().StringVar(&description, "description", "", "free text")
	setC.Flags().StringVar(&measuredBoot, "measured-boot", "", "off (admit whatever booted; logs are still judged and recorded) or enforce (refuse enrollment and renewal unless the event log replays to the quote and shows approved firmware: see `enrollctl firmware`)")
	setC.Flags().BoolVar(&secureBoot, "require-secure-boot", false, "with --measured-boot enforce, also refuse devices that booted without UEFI secure boot")
	setC.Flags().IntSliceVar(&requirePCRs, "require-pcrs", nil, "PCRs besides 0-7 the group's devices must quote and their event log must account for, e.g. 8,9,14 (empty to clear)")
	cmd.AddCommand(listC, getC, setC)
	return cmd
}

// measuredBootText summarises a group's measured-boot policy.
func measuredBootText(g *api.GroupSpec) string {
	mode := g.MeasuredBoot
	if mode == "" {
		mode = api.MeasuredBootOff
	}
	var extra []string
	if g.RequireSecureBoot {
		extra = append(extra, "secure boot")
	}
	if len(g.RequiredPCRs) > 0 {
		extra = append(extra, fmt.Sprintf("PCRs %v", g.RequiredPCRs))
	}
	if len(extra) > 0 {
		mode += " (" + strings.Join(extra, ", ") + ")"
	}
	return mode
}

// scopeFlags are --group/--device of the config commands.
type scopeFlags struct{ group, device string }

func (s *scopeFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&s.group, "group", "", "the group's config (a template: ${device_id}, ${serial}, ${group}, ${label:KEY})")
	cmd.Flags().StringVar(&s.device, "device", "", "one device's config (overrides its group's)")
	cmd.MarkFlagsOneRequired("group", "device")
	cmd.MarkFlagsMutuallyExclusive("group", "device")
}

func (s *scopeFlags) scope() (api.ConfigScope, error) {
	sc := api.ConfigScope{Group: s.group, DeviceID: s.device}
	if err := sc.Validate(); err != nil {
		return sc, usageErr(err)
	}
	return sc, nil
}

func (s *scopeFlags) query() url.Values {
	q := url.Values{}
	setIf(q, "group", s.group)
	setIf(q, "device", s.device)
	return q
}

func configCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Versioned config bundles per group or device: set, show, history, rollback"}
	printVersion := func(cmd *cobra.Command, cv *api.ConfigVersion) error {
		return render(g, cmd.OutOrStdout(), cv, func(tw *tabwriter.Writer) {
			fmt.Fprintf(tw, "Scope:\t%s\nVersion:\t%d\nCreated:\t%s by %s\nComment:\t%s\n", cv.Scope, cv.Version, ts(cv.CreatedAt), cv.CreatedBy, dash(cv.Comment))
			if cv.RolledBackFrom != 0 {
				fmt.Fprintf(tw, "Rolled back from:\t%d\n", cv.RolledBackFrom)
			}
			var buf bytes.Buffer
			if json.Indent(&buf, cv.Config, "", "  ") == nil {
				fmt.Fprintf(tw, "Config:\n%s\n", buf.String())
			}
		})
	}
	var setScope scopeFlags
	var comment string
	setC := &cobra.Command{
		Use:   "set (--group G | --device ID) FILE",
		Short: "Create a new config version from a JSON object file ('-' reads stdin)",
		Example: `  enrollctl config set --group line-a line-a.json --comment "new NTP servers"
  enrollctl config set --device 3f2a...e1 override.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := setScope.scope()
			if err != nil {
				return err
			}
			var b []byte
			if args[0] == "-" {
				b, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), api.MaxConfigBytes+1))
			} else {
				b, err = os.ReadFile(args[0])
			}
			if err != nil {
				return usageErr(err)
			}
			req := api.ConfigSetRequest{ConfigScope: sc, Config: bytes.TrimSpace(b), Comment: comment}
			if err := req.Validate(); err != nil {
				return &exitError{code: exitInvalid, err: fmt.Errorf("%s: %w", args[0], err)}
			}
			var cv api.ConfigVersion
			if err := g.call(cmd.Context(), http.MethodPost, api.PathAdminConfig, nil, &req, &cv); err != nil {
				return err
			}
			return printVersion(cmd, &cv)
		},
	}
	setScope.register(setC)
	setC.Flags().StringVar(&comment, "comment", "", "what changed, for the history and audit log")

	var showScope scopeFlags
	var version uint64
	showC := &cobra.Command{
		Use:     "show (--group G | --device ID) [--version N]",
		Short:   "Show the latest (or a given) config version",
		Example: `  enrollctl config show --group line-a -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := showScope.scope(); err != nil {
				return err
			}
			q := showScope.query()
			if version > 0 {
				q.Set("version", strconv.FormatUint(version, 10))
			}
			var cv api.ConfigVersion
			if err := g.call(cmd.Context(), http.MethodGet, api.PathAdminConfig, q, nil, &cv); err != nil {
				return err
			}
			return printVersion(cmd, &cv)
		},
	}
	showScope.register(showC)
	showC.Flags().Uint64Var(&version, "version", 0, "version to show (default: latest)")

	var histScope scopeFlags
	var before uint64
	histC := &cobra.Command{
		Use:   "history (--group G | --device ID) [--before VERSION]",
		Short: "List a scope's config versions, newest first, a page at a time",
		Example: `  enrollctl config history --group line-a
  enrollctl config history --group line-a --before 40     # the page after one ending at 40`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := histScope.scope(); err != nil {
				return err
			}
			q := histScope.query()
			if before > 0 {
				q.Set("before", strconv.FormatUint(before, 10))
			}
			var h api.ConfigHistory
			if err := g.call(cmd.Context(), http.MethodGet, api.PathAdminConfigHist, q, nil, &h); err != nil {
				return err
			}
			return render(g, cmd.OutOrStdout(), h, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "VERSION\tCREATED\tBY\tROLLED BACK FROM\tCOMMENT")
				for _, v := range h.Versions {
					from := "-"
					if v.RolledBackFrom != 0 {
						from = strconv.FormatUint(v.RolledBackFrom, 10)
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", v.Version, ts(v.CreatedAt), v.CreatedBy, from, dash(v.Comment))
				}
				if h.NextBefore != 0 {
					fmt.Fprintf(tw, "(older versions: --before %d)\n", h.NextBefore)
				}
			})
		},
	}
	histScope.register(histC)
	histC.Flags().Uint64Var(&before, "before", 0, "list versions older than this one (the next page)")

	var rbScope scopeFlags
	var to uint64
	rbC := &cobra.Command{
		Use:     "rollback (--group G | --device ID) --to N",
		Short:   "Restore version N's content as a new, higher version (versions never go down)",
		Example: `  enrollctl config rollback --group line-a --to 4 --comment "NTP change broke sites"`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sc, err := rbScope.scope()
			if err != nil {
				return err
			}
			req := api.ConfigRollbackRequest{ConfigScope: sc, ToVersion: to, Comment: comment}
			if err := req.Validate(); err != nil {
				return usageErr(err)
			}
			var cv api.ConfigVersion
			if err := g.call(cmd.Context(), http.MethodPost, api.PathAdminConfigRoll, nil, &req, &cv); err != nil {
				return err
			}
			return printVersion(cmd, &cv)
		},
	}
	rbScope.register(rbC)
	rbC.Flags().Uint64Var(&to, "to", 0, "the version whose content to restore")
	rbC.Flags().StringVar(&comment, "comment", "", "why, for the history and audit log")
	rbC.MarkFlagRequired("to")
	cmd.AddCommand(setC, showC, histC, rbC)
	return cmd
}

func certsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "certs", Short: "Issued device certificates"}
	var device string
	var revoked bool
	var limit int
	listC := &cobra.Command{
		Use:   "list",
		Short: "List issued certificates",
		Example: `  enrollctl certs list --device 3f2a...e1
  enrollctl certs list --revoked -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			setIf(q, "device", device)
			if revoked {
				q.Set("revoked", "true")
			}
			pages, err := list(cmd.Context(), g, api.PathAdminCertificates, q, limit,
				func(p *api.CertificateList) int { return len(p.Certificates) }, func(p *api.CertificateList) string { return p.NextPageToken })
			if err != nil {
				return err
			}
			all := api.CertificateList{Certificates: []api.CertificateInfo{}}
			for _, p := range pages {
				all.Certificates = append(all.Certificates, p.Certificates...)
			}
			return render(g, cmd.OutOrStdout(), all, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "SERIAL\tDEVICE ID\tNOT BEFORE\tNOT AFTER\tRENEWAL\tREVOKED\tREASON")
				for _, c := range all.Certificates {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\t%s\n", c.Serial, c.DeviceID, ts(c.NotBefore), ts(c.NotAfter), c.Renewal, ts(c.RevokedAt), dash(c.RevocationReason))
				}
			})
		},
	}
	listC.Flags().StringVar(&device, "device", "", "only this device's certificates")
	listC.Flags().BoolVar(&revoked, "revoked", false, "only revoked certificates")
	listC.Flags().IntVar(&limit, "limit", 0, "list at most this many (default: all)")
	cmd.AddCommand(listC)
	return cmd
}

func auditCmd(g *globals) *cobra.Command {
	var since, actor, action, target string
	var limit int
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read the append-only audit log: who did what, when, before and after",
		Example: `  enrollctl audit --since 24h
  enrollctl audit --action device. --target 3f2a...e1
  enrollctl audit --actor operator/alice -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if since != "" {
				t, err := parseSince(since)
				if err != nil {
					return usageErr(err)
				}
				q.Set("since", t.UTC().Format(time.RFC3339))
			}
			setIf(q, "actor", actor)
			setIf(q, "action", action)
			setIf(q, "target", target)
			pages, err := list(cmd.Context(), g, api.PathAdminAudit, q, limit,
				func(p *api.AuditList) int { return len(p.Records) }, func(p *api.AuditList) string { return p.NextPageToken })
			if err != nil {
				return err
			}
			all := api.AuditList{Records: []api.AuditRecord{}}
			for _, p := range pages {
				all.Records = append(all.Records, p.Records...)
			}
			return render(g, cmd.OutOrStdout(), all, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "SEQ\tTIME\tACTOR\tACTION\tTARGET\tOUTCOME\tDETAIL")
				for _, r := range all.Records {
					detail := r.Message
					if r.Code != "" {
						detail = string(r.Code) + ": " + detail
					} else if len(r.After) > 0 && detail == "" {
						detail = string(r.After)
					}
					if len(detail) > 120 {
						detail = detail[:117] + "..."
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, ts(r.Time), r.Actor, r.Action, dash(r.Target), r.Outcome, dash(detail))
				}
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&since, "since", "", "only records since a time (RFC 3339) or a duration ago (24h)")
	fl.StringVar(&actor, "actor", "", "only this actor: a name, role/name, or a kind (anonymous, device, system)")
	fl.StringVar(&action, "action", "", "only this action (device.revoke); a prefix ending in '.' matches all (device.)")
	fl.StringVar(&target, "target", "", "only this target (a device ID, group/NAME, ...)")
	fl.IntVar(&limit, "limit", 0, "read at most this many (default: all)")
	return cmd
}

func parseSince(s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q is neither an RFC 3339 time nor a duration such as 24h", s)
	}
	return t, nil
}

func operatorsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "operators", Short: "Operator credentials (admin only)"}
	var role, name, out string
	var lifetime time.Duration
	issueC := &cobra.Command{
		Use:   "issue --role ROLE --name NAME --out DIR",
		Short: "Issue an operator credential into DIR (the key is made here and never sent)",
		Example: `  enrollctl operators issue --role viewer --name bob --out ./bob
  enrollctl operators issue --role factory --name line-a-station-3 --out /etc/enrollctl/station-3 --lifetime 168h
  ENROLLCTL_ADMIN_DIR=./bob enrollctl devices list`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if entries, err := os.ReadDir(out); err == nil && len(entries) > 0 {
				return usageErr(fmt.Errorf("--out %s is not empty: choose a new directory", out))
			} else if err != nil && !errors.Is(err, os.ErrNotExist) {
				return usageErr(err)
			}
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return err
			}
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
			if err != nil {
				return err
			}
			req := api.OperatorIssueRequest{Name: name, Role: role, CSR: csr, LifetimeSeconds: int64(lifetime / time.Second)}
			if err := req.Validate(); err != nil {
				return usageErr(err)
			}
			var resp api.OperatorIssueResponse
			if err := g.call(cmd.Context(), http.MethodPost, api.PathAdminOperators, nil, &req, &resp); err != nil {
				return err
			}
			if err := pki.WriteOperatorDir(out, resp.CertificateChain, key, resp.RootCertificate); err != nil {
				return err
			}
			view := struct {
				api.OperatorIssueResponse
				Dir string `json:"dir"`
			}{resp, out}
			view.CertificateChain, view.RootCertificate = nil, nil
			return render(g, cmd.OutOrStdout(), view, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "issued %s (certificate %s, expires %s) into %s\n", resp.Operator, resp.Serial, ts(resp.NotAfter), out)
				fmt.Fprintf(tw, "use it with --admin-dir %s or ENROLLCTL_ADMIN_DIR=%s\n", out, out)
			})
		},
	}
	fl := issueC.Flags()
	fl.StringVar(&role, "role", "", "admin, operator, factory or viewer")
	fl.StringVar(&name, "name", "", "operator name: lowercase letters, digits, '.', '-', '_'")
	fl.StringVar(&out, "out", "", "directory to create for ca.crt, operator.crt and operator.key (0600)")
	fl.DurationVar(&lifetime, "lifetime", 0, "certificate lifetime (default 720h, at most 720h)")
	for _, f := range []string{"role", "name", "out"} {
		issueC.MarkFlagRequired(f)
	}
	cmd.AddCommand(issueC, operatorsRevokeCmd(g))
	return cmd
}

func operatorsRevokeCmd(g *globals) *cobra.Command {
	var req api.OperatorRevokeRequest
	cmd := &cobra.Command{
		Use:   "revoke --serial SERIAL",
		Short: "Revoke an operator credential: every admin call made with it is refused from now on",
		Example: `  enrollctl operators revoke --serial 4f2a9c... --reason "laptop lost"
  enrollctl audit --action operator.issue     # the serial of each credential issued`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := req.Validate(); err != nil {
				return usageErr(err)
			}
			var resp api.OperatorRevokeResponse
			if err := g.call(cmd.Context(), http.MethodPost, api.PathAdminOperatorsRevoke, nil, &req, &resp); err != nil {
				return err
			}
			return render(g, cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				if resp.Changed {
					fmt.Fprintf(tw, "revoked operator credential %s\n", resp.Serial)
				} else {
					fmt.Fprintf(tw, "operator credential %s was revoked already, at %s\n", resp.Serial, ts(resp.RevokedAt))
				}
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&req.Serial, "serial", "", "the credential's certificate serial (lowercase hex), as issue printed it")
	fl.StringVar(&req.Reason, "reason", "", "why, for the audit log")
	cmd.MarkFlagRequired("serial")
	return cmd
}

func crlCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "crl",
		Short: "Fetch and verify the revocation list enrolld publishes at " + api.PathCRLPEM,
		Long: `Fetches every issuer's revocation list (` + api.PathCRLPEM + `) and shows the one signed by
the intermediate of your operator credential, checked against ca.crt. After an intermediate
rotation that is the retired intermediate's list until your credential is renewed; every
issuer's list carries the same entries.`,
		Example: `  enrollctl crl
  enrollctl crl --out crl.der`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := g.httpClient()
			if err != nil {
				return err
			}
			req, err := http.NewRequestWithContext(cmd.Context(), http.MethodGet, g.server+api.PathCRLPEM, nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return &exitError{code: exitUnavailable, err: err}
			}
			defer resp.Body.Close()
			data, err := io.ReadAll(io.LimitReader(resp.Body, api.MaxAdminResponseBytes))
			if err != nil || resp.StatusCode != http.StatusOK {
				return &exitError{code: exitUnavailable, err: fmt.Errorf("GET %s: HTTP %d %v", api.PathCRLPEM, resp.StatusCode, err)}
			}
			der, crl, err := verifiedCRL(g, data)
			if err != nil {
				return err
			}
			if out != "" {
				if err := atomicfile.Write(out, der, 0o644); err != nil {
					return err
				}
			}
			type entry struct {
				Serial     string    `json:"serial"`
				RevokedAt  time.Time `json:"revoked_at"`
				ReasonCode int       `json:"reason_code"`
			}
			view := struct {
				Issuer     string    `json:"issuer"`
				Number     string    `json:"number"`
				ThisUpdate time.Time `json:"this_update"`
				NextUpdate time.Time `json:"next_update"`
				Revoked    []entry   `json:"revoked"`
			}{Issuer: crl.Issuer.String(), Number: crl.Number.String(), ThisUpdate: crl.ThisUpdate, NextUpdate: crl.NextUpdate, Revoked: []entry{}}
			for _, e := range crl.RevokedCertificateEntries {
				view.Revoked = append(view.Revoked, entry{Serial: e.SerialNumber.Text(16), RevokedAt: e.RevocationTime, ReasonCode: e.ReasonCode})
			}
			sort.Slice(view.Revoked, func(i, j int) bool { return view.Revoked[i].Serial < view.Revoked[j].Serial })
			return render(g, cmd.OutOrStdout(), view, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "Issuer:\t%s\nNumber:\t%s\nThis update:\t%s\nNext update:\t%s\n\nSERIAL\tREVOKED\tREASON CODE\n", view.Issuer, view.Number, ts(view.ThisUpdate), ts(view.NextUpdate))
				for _, e := range view.Revoked {
					fmt.Fprintf(tw, "%s\t%s\t%d\n", e.Serial, ts(e.RevokedAt), e.ReasonCode)
				}
			})
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "also write the DER CRL to this file")
	return cmd
}

// verifiedCRL returns, of the PEM revocation lists in data (one per
// issuer), the one signed by the intermediate of our operator
// certificate, which must chain to ca.crt.
func verifiedCRL(g *globals, data []byte) ([]byte, *x509.RevocationList, error) {
	issuers, err := operatorIssuers(g)
	if err != nil {
		return nil, nil, err
	}
	n := 0
	for rest := data; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if blk.Type != "X509 CRL" {
			continue
		}
		n++
		crl, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("GET %s: list %d: %w", api.PathCRLPEM, n, err)
		}
		for _, c := range issuers {
			if crl.CheckSignatureFrom(c) == nil {
				return blk.Bytes, crl, nil
			}
		}
	}
	if n == 0 {
		return nil, nil, fmt.Errorf("GET %s: no PEM revocation list in the answer; is the server older than this enrollctl?", api.PathCRLPEM)
	}
	return nil, nil, fmt.Errorf("none of the %d revocation lists is signed by this server's CA (the intermediate of your operator credential)", n)
}

// operatorIssuers returns the CA certificates in our operator.crt chain
// that verify to ca.crt: the intermediates whose CRLs we trust.
func operatorIssuers(g *globals) ([]*x509.Certificate, error) {
	chainPEM, err := os.ReadFile(filepath.Join(g.adminDir, "operator.crt"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(g.adminDir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	var out []*x509.Certificate
	for rest := chainPEM; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil || !c.IsCA {
			continue
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
			out = append(out, c)
		}
	}
	return out, nil
}
