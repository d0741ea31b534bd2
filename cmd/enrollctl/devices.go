package main

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/edgeenroll/edgeenroll/api"
)

func devicesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "Inspect devices and decide about them: list, get, approve, deny, revoke, readmit",
	}
	cmd.AddCommand(devicesListCmd(g), devicesGetCmd(g))
	for _, a := range api.DeviceActions() {
		cmd.AddCommand(deviceActionCmd(g, a))
	}
	return cmd
}

func devicesListCmd(g *globals) *cobra.Command {
	var status, group string
	var labels []string
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List devices, filtered by status, group and labels",
		Example: `  enrollctl devices list
  enrollctl devices list --status pending
  enrollctl devices list --group line-a --label site=berlin -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if status != "" && !api.ValidStatus(status) {
				return usageErr(fmt.Errorf("--status must be one of %s", strings.Join(api.DeviceStatuses(), ", ")))
			}
			q := url.Values{}
			setIf(q, "status", status)
			setIf(q, "group", group)
			for _, l := range labels {
				q.Add("label", l)
			}
			pages, err := list(cmd.Context(), g, api.PathAdminDevices, q, limit,
				func(p *api.DeviceList) int { return len(p.Devices) }, func(p *api.DeviceList) string { return p.NextPageToken })
			if err != nil {
				return err
			}
			all := api.DeviceList{Devices: []api.DeviceSummary{}}
			for _, p := range pages {
				all.Devices = append(all.Devices, p.Devices...)
			}
			if limit > 0 && len(all.Devices) > limit {
				all.Devices = all.Devices[:limit]
			}
			return render(g, cmd.OutOrStdout(), all, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "DEVICE ID\tSTATUS\tADMISSION\tSERIAL\tGROUP\tLABELS\tCERT EXPIRES\tBUNDLE\tENROLLMENTS\tFIRMWARE")
				for _, d := range all.Devices {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", d.DeviceID, d.Status, d.Admission, dash(d.Serial), dash(d.Group),
						dash(api.FormatLabels(d.Labels)), ts(d.CertNotAfter), d.BundleVersion, d.Enrollments, firmwareVerdict(d.Firmware))
				}
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&status, "status", "", "only devices of this status: "+strings.Join(api.DeviceStatuses(), ", "))
	fl.StringVar(&group, "group", "", "only devices of this group")
	fl.StringArrayVar(&labels, "label", nil, "only devices with this label, key=value (repeatable)")
	fl.IntVar(&limit, "limit", 0, "list at most this many (default: all)")
	return cmd
}

func setIf(q url.Values, k, v string) {
	if v != "" {
		q.Set(k, v)
	}
}

func devicesGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "get DEVICE_ID",
		Short:   "Show one device: status, factory data, certificates, config",
		Example: `  enrollctl devices get 3f2a...e1 -o yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !api.ValidDeviceID(args[0]) {
				return usageErr(fmt.Errorf("DEVICE_ID must be 64 lowercase hex characters, got %q", args[0]))
			}
			var d api.DeviceDetail
			if err := g.call(cmd.Context(), http.MethodGet, api.PathAdminDevices+"/"+args[0], nil, nil, &d); err != nil {
				return err
			}
			return render(g, cmd.OutOrStdout(), d, func(tw *tabwriter.Writer) {
				for _, kv := range [][2]string{
					{"Device ID", d.DeviceID}, {"Status", d.Status}, {"Admission", d.Admission},
					{"Serial", dash(d.Serial)}, {"Group", dash(d.Group)}, {"Labels", dash(api.FormatLabels(d.Labels))},
					{"Hostname", dash(d.Hostname)}, {"Agent version", dash(d.AgentVersion)}, {"EK issuer", dash(d.EKIssuer)},
					{"Certificate", dash(d.CertSerial)}, {"Expires", ts(d.CertNotAfter)},
					{"Enrollments", fmt.Sprintf("%d (%d renewals)", d.Enrollments, d.Renewals)}, {"Last enrolled", ts(d.LastEnrolledAt)},
					{"Pending since", ts(d.PendingSince)}, {"Pending expires", ts(d.PendingExpiresAt)},
					{"Status changed", fmt.Sprintf("%s by %s: %s", ts(d.StatusChangedAt), dash(d.StatusChangedBy), dash(d.StatusReason))},
					{"Config", fmt.Sprintf("%s version %d (delivered: %d)", d.ConfigScope, d.ConfigVersion, d.BundleVersion)},
				} {
					fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
				}
				for _, kv := range firmwareLines(d.Firmware) {
					fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
				}
				fmt.Fprintln(tw, "\nCERTIFICATE\tNOT AFTER\tRENEWAL\tREVOKED")
				for _, c := range d.Certificates {
					fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", c.Serial, ts(c.NotAfter), c.Renewal, ts(c.RevokedAt))
				}
			})
		},
	}
}

// firmwareVerdict summarises a measured boot in one word or two.
func firmwareVerdict(f *api.MeasuredFirmware) string {
	switch {
	case f == nil:
		return "-"
	case f.Code != "":
		return f.Verdict + ": " + string(f.Code)
	}
	return f.Verdict
}

// firmwareLines describe the last measured boot for devices get.
func firmwareLines(f *api.MeasuredFirmware) [][2]string {
	if f == nil {
		return [][2]string{{"Firmware", "not measured (the device never sent a TCG event log)"}}
	}
	digest := "none: the event log did not replay to the quote"
	if f.Digest != "" {
		digest = f.Digest
		if f.Version != "" {
			digest += fmt.Sprintf(" (version %q)", f.Version)
		}
	}
	verdict := f.Verdict
	switch {
	case f.Reference != "":
		verdict += fmt.Sprintf(" (reference %q)", f.Reference)
	case f.Code != "" && f.Verdict == api.FirmwareNotEnforced:
		verdict += fmt.Sprintf(" (enforcement would refuse: %s)", f.Code)
	case f.Code != "":
		verdict += ": " + string(f.Code)
	}
	when := ts(f.MeasuredAt)
	if f.Renewal {
		when += " (renewal)"
	}
	out := [][2]string{{"Firmware", digest}, {"Firmware verdict", verdict}}
	if f.Reason != "" {
		out = append(out, [2]string{"Firmware reason", f.Reason})
	}
	if f.Digest != "" {
		sb := "on"
		if !f.SecureBoot {
			sb = "off: " + dash(f.SecureBootDetail)
		}
		out = append(out, [2]string{"Secure boot", sb})
		if f.BootLoaderDigest != "" {
			out = append(out, [2]string{"Boot loader", f.BootLoaderDigest})
		}
	}
	return append(out, [2]string{"Firmware measured", when})
}

func deviceActionCmd(g *globals, action api.DeviceAction) *cobra.Command {
	var group, reason, reasonCode string
	var labels []string
	short := map[api.DeviceAction]string{
		api.ActionApprove: "Approve pending devices: each enrolls at its next retry",
		api.ActionDeny:    "Deny pending devices: their enrollments are refused until readmitted",
		api.ActionRevoke:  "Revoke devices: every certificate goes on the CRL, renewal and whoami are refused",
		api.ActionReadmit: "Re-admit denied or revoked devices: their next enrollment proceeds",
	}[action]
	example := map[api.DeviceAction]string{
		api.ActionApprove: `  enrollctl devices approve 3f2a...e1 9bc0...07
  enrollctl devices approve --group line-a
  enrollctl devices approve --label batch=2026-07`,
		api.ActionDeny:    `  enrollctl devices deny 3f2a...e1 --reason "unknown device"`,
		api.ActionRevoke:  `  enrollctl devices revoke 3f2a...e1 --reason "stolen" --reason-code key-compromise`,
		api.ActionReadmit: `  enrollctl devices readmit 3f2a...e1 --reason "found, re-imaged"`,
	}[action]
	cmd := &cobra.Command{
		Use:     string(action) + " [DEVICE_ID...]",
		Short:   short,
		Example: example,
		Args:    cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.DeviceActionRequest{DeviceIDs: args, Group: group, Reason: reason, ReasonCode: reasonCode}
			if len(labels) > 0 {
				req.Labels = map[string]string{}
				for _, l := range labels {
					m, err := api.ParseLabels(l, ",")
					if err != nil {
						return usageErr(err)
					}
					for k, v := range m {
						req.Labels[k] = v
					}
				}
			}
			if err := req.Validate(); err != nil {
				return usageErr(err)
			}
			if action == api.ActionRevoke && reason == "" {
				return usageErr(fmt.Errorf("revoke needs --reason"))
			}
			var resp api.DeviceActionResponse
			if err := g.call(cmd.Context(), http.MethodPost, api.PathAdminDevices+"/"+string(action), nil, &req, &resp); err != nil {
				return err
			}
			if err := render(g, cmd.OutOrStdout(), resp, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "DEVICE ID\tOUTCOME\tSTATUS\tMESSAGE")
				for _, r := range resp.Results {
					msg := r.Message
					if len(r.RevokedCertificates) > 0 {
						msg = fmt.Sprintf("revoked certificates %s", strings.Join(r.RevokedCertificates, ", "))
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.DeviceID, r.Outcome, dash(r.Status), dash(msg))
				}
			}); err != nil {
				return err
			}
			return actionExit(&resp)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&group, "group", "", "select devices of this group (pending ones for approve and deny)")
	fl.StringArrayVar(&labels, "label", nil, "select devices with this label, key=value (repeatable)")
	fl.StringVar(&reason, "reason", "", "why, for the audit log (required for revoke)")
	if action == api.ActionRevoke {
		fl.StringVar(&reasonCode, "reason-code", "", "CRL reason: unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation")
	}
	return cmd
}

// actionExit is 0 if no device was refused, the refusal's code if all
// were, and exitPartial otherwise, or when a revocation committed but the
// CRL could not be signed again.
func actionExit(resp *api.DeviceActionResponse) error {
	refused := 0
	var last *api.DeviceActionResult
	for i, r := range resp.Results {
		if r.Outcome == api.OutcomeRefused {
			refused++
			last = &resp.Results[i]
		}
	}
	switch {
	case refused == 0 && resp.CRLError != "":
		return &exitError{code: exitPartial, err: fmt.Errorf("%s: %s", resp.Action, resp.CRLError)}
	case refused == 0:
		return nil
	case refused == len(resp.Results):
		return &exitError{code: codeExit(last.Code), err: fmt.Errorf("%s refused: %s", resp.Action, last.Message), silent: true}
	}
	return &exitError{code: exitPartial, err: fmt.Errorf("%s refused for %d of %d devices", resp.Action, refused, len(resp.Results)), silent: true}
}

func preregisterCmd(g *globals) *cobra.Command {
	var ekHash, ekCert, ekPub, serial, group string
	cmd := &cobra.Command{
		Use:   "preregister",
		Short: "Register one device identity (EK) before it enrolls (for files, use import)",
		Example: `  enrollctl preregister --ek-cert ek.pem --serial SN123 --group line-a
  enrollctl preregister --ek-hash 3f2a... --serial SN124`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, err := deviceIDFrom(ekHash, ekCert, ekPub)
			if err != nil {
				return usageErr(err)
			}
			req := api.PreregisterRequest{Devices: []api.Preregistration{{DeviceID: id, Serial: serial, Group: group}}}
			if err := req.Validate(); err != nil {
				return usageErr(err)
			}
			var resp api.PreregisterResponse
			if err := g.call(cmd.Context(), http.MethodPost, api.PathAdminPreregistrations, nil, &req, &resp); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pre-registered device %s\n", id)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&ekHash, "ek-hash", "", "device ID: hex SHA-256 of the EK public key (PKIX DER)")
	fl.StringVar(&ekCert, "ek-cert", "", "EK certificate file (PEM or DER)")
	fl.StringVar(&ekPub, "ek-pub", "", "EK public key file (PEM or DER, PKIX)")
	fl.StringVar(&serial, "serial", "", "device serial number")
	fl.StringVar(&group, "group", "", "device group")
	cmd.MarkFlagsOneRequired("ek-hash", "ek-cert", "ek-pub")
	cmd.MarkFlagsMutuallyExclusive("ek-hash", "ek-cert", "ek-pub")
	return cmd
}

// deviceIDFrom computes the device ID from whichever EK form was given.
func deviceIDFrom(hash, certFile, pubFile string) (string, error) {
	switch {
	case hash != "":
		if !api.ValidDeviceID(hash) {
			return "", fmt.Errorf("--ek-hash must be 64 lowercase hex characters (SHA-256 of the EK public key), got %q", hash)
		}
		return hash, nil
	case certFile != "":
		der, err := readPEMOrDER(certFile, "CERTIFICATE")
		if err != nil {
			return "", err
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			// TCG EK certificates parse in Go; anything else is not one.
			return "", fmt.Errorf("--ek-cert %s: %w", certFile, err)
		}
		return sha256Hex(c.RawSubjectPublicKeyInfo), nil
	default:
		der, err := readPEMOrDER(pubFile, "PUBLIC KEY")
		if err != nil {
			return "", err
		}
		if _, err := x509.ParsePKIXPublicKey(der); err != nil {
			return "", fmt.Errorf("--ek-pub %s is not a PKIX public key: %w", pubFile, err)
		}
		return sha256Hex(der), nil
	}
}

func readPEMOrDER(path, blockType string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != blockType {
			return nil, fmt.Errorf("%s holds a PEM %q block, want %q", path, blk.Type, blockType)
		}
		return blk.Bytes, nil
	}
	return b, nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
