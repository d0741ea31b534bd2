package httpapi

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/pki"
)

// adminRoute is one admin endpoint: the audit action it performs and the
// permission it needs. Writes audit their refusals of any kind; reads audit
// refused authorisation only.
type adminRoute struct {
	method, path string
	action       string
	perm         enrollserver.Permission
	write        bool
	serve        func(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error
}

func (h *handler) adminRoutes() []adminRoute {
	R, O, I, A := enrollserver.PermRead, enrollserver.PermOperate, enrollserver.PermImport, enrollserver.PermAdmin
	return []adminRoute{
		{"GET", api.PathAdminStatus, "status.read", R, false, h.status},
		{"GET", api.PathAdminDevices, "devices.list", R, false, h.listDevices},
		{"GET", api.PathAdminDevices + "/{id}", "device.get", R, false, h.getDevice},
		{"POST", api.PathAdminDevices + "/{action}", "", O, true, h.deviceAction},
		{"POST", api.PathAdminPreregistrations, "preregister", I, true, h.preregister},
		{"GET", api.PathAdminImports, "imports.list", I, false, h.listImports},
		{"POST", api.PathAdminImports, "import.start", I, true, h.importStart},
		{"POST", api.PathAdminImports + "/{id}/rows", "import.rows", I, true, h.importRows},
		{"POST", api.PathAdminImports + "/{id}/commit", "import.commit", I, true, h.importCommit},
		{"DELETE", api.PathAdminImports + "/{id}", "import.abort", I, true, h.importAbort},
		{"GET", api.PathAdminGroups, "groups.list", R, false, h.listGroups},
		{"GET", api.PathAdminGroups + "/{name}", "group.get", R, false, h.getGroup},
		{"PUT", api.PathAdminGroups + "/{name}", "group.set", O, true, h.setGroup},
		{"GET", api.PathAdminConfig, "config.show", R, false, h.showConfig},
		{"POST", api.PathAdminConfig, "config.set", O, true, h.setConfig},
		{"GET", api.PathAdminConfigHist, "config.history", R, false, h.configHistory},
		{"POST", api.PathAdminConfigRoll, "config.rollback", O, true, h.rollbackConfig},
		{"GET", api.PathAdminCertificates, "certificates.list", R, false, h.listCertificates},
		{"GET", api.PathAdminAudit, "audit.read", R, false, h.auditLog},
		{"POST", api.PathAdminOperators, "operator.issue", A, true, h.issueOperator},
		{"POST", api.PathAdminOperatorsRevoke, "operator.revoke", A, true, h.revokeOperator},
		{"GET", api.PathAdminFirmware, "firmware.list", R, false, h.listFirmware},
		{"POST", api.PathAdminFirmware, "firmware.add", O, true, h.addFirmware},
		{"POST", api.PathAdminFirmwareRetire, "firmware.retire", O, true, h.retireFirmware},
	}
}

func (h *handler) registerAdmin(mux *http.ServeMux) {
	for _, rt := range h.adminRoutes() {
		mux.HandleFunc(rt.method+" "+rt.path, func(w http.ResponseWriter, r *http.Request) {
			corr := correlationID(r)
			call := &enrollserver.Call{CorrelationID: corr, Principal: h.principal(r)}
			action := rt.action
			if action == "" {
				// Named by the path: an unknown one is audited and
				// counted as such, not as whatever the client wrote.
				action = "device.unknown"
				if a := api.DeviceAction(r.PathValue("action")); slices.Contains(api.DeviceActions(), a) {
					action = "device." + string(a)
				}
			}
			if err := h.srv.Authorize(r.Context(), call, rt.perm, action, r.URL.Path); err != nil {
				h.fail(w, r, corr, err)
				return
			}
			err := rt.serve(w, r, call)
			if err == nil {
				return
			}
			var de *decodeError
			if errors.As(err, &de) {
				if rt.write {
					h.srv.RecordRefusal(r.Context(), call, action, r.URL.Path, de.err)
				}
				err = de.err
			}
			h.fail(w, r, corr, err)
		})
	}
}

// principal names the caller from its verified client certificate.
func (h *handler) principal(r *http.Request) enrollserver.Principal {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return h.srv.PrincipalFromCertificate(nil)
	}
	return h.srv.PrincipalFromCertificate(r.TLS.VerifiedChains[0][0])
}

// decodeError is a request the handler could not read: the server method
// never ran, so the adapter audits the refusal of a write.
type decodeError struct{ err error }

func (e *decodeError) Error() string { return e.err.Error() }

func decodeAdmin(r *http.Request, v api.Validator) error {
	if ct := r.Header.Get("Content-Type"); ct != api.ContentTypeJSON {
		return &decodeError{api.Errorf(api.CodeBadRequest, "Content-Type must be %s, got %q", api.ContentTypeJSON, ct)}
	}
	if err := api.Decode(r.Body, api.MaxAdminRequestBytes, v); err != nil {
		return &decodeError{err}
	}
	return nil
}

func badQuery(format string, args ...any) error {
	return &decodeError{api.Errorf(api.CodeBadRequest, format, args...)}
}

func queryInt(q url.Values, name string) (int, error) {
	s := q.Get(name)
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, badQuery("%s=%.40q must be a non-negative integer", name, s)
	}
	return n, nil
}

func queryLabels(q url.Values) (map[string]string, error) {
	var out map[string]string
	for _, l := range q["label"] {
		m, err := api.ParseLabels(l, ",")
		if err != nil {
			return nil, &decodeError{err}
		}
		if out == nil {
			out = map[string]string{}
		}
		for k, v := range m {
			out[k] = v
		}
	}
	return out, nil
}

func (h *handler) status(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	resp, err := h.srv.Status(r.Context(), call)
	if err != nil {
		return err
	}
	if h.opts.Ready != nil {
		resp.Ready = h.opts.Ready(r.Context()) == nil
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) listDevices(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	q := r.URL.Query()
	limit, err := queryInt(q, "limit")
	if err != nil {
		return err
	}
	labels, err := queryLabels(q)
	if err != nil {
		return err
	}
	if g := q.Get("group"); g != "" {
		if err := api.ValidateGroupName(g); err != nil {
			return &decodeError{err}
		}
	}
	resp, err := h.srv.ListDevices(r.Context(), enrollserver.DeviceQuery{Status: q.Get("status"), Group: q.Get("group"), Labels: labels, After: q.Get("after"), Limit: limit})
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) getDevice(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	resp, err := h.srv.GetDevice(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) deviceAction(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	var req api.DeviceActionRequest
	if err := decodeAdmin(r, &req); err != nil {
		return err
	}
	resp, err := h.srv.DeviceAction(r.Context(), call, api.DeviceAction(r.PathValue("action")), &req)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) preregister(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	var req api.PreregisterRequest
	if err := decodeAdmin(r, &req); err != nil {
		return err
	}
	resp, err := h.srv.Preregister(r.Context(), call, &req)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) listImports(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	resp, err := h.srv.ListImports(r.Context(), call)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) importStart(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	var req api.ImportStartRequest
	if err := decodeAdmin(r, &req); err != nil {
		return err
	}
	resp, err := h.srv.StartImport(r.Context(), call, &req)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) importRows(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	var req api.ImportRowsRequest
	if err := decodeAdmin(r, &req); err != nil {
		return err
	}
	resp, err := h.srv.StageImport(r.Context(), call, r.PathValue("id"), &req)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) importCommit(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	var req api.ImportCommitRequest
	if err := decodeAdmin(r, &req); err != nil {
		return err
	}
	resp, err := h.srv.CommitImport(r.Context(), call, r.PathValue("id"), &req)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) importAbort(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	if err := h.srv.AbortImport(r.Context(), call, r.PathValue("id")); err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, struct{}{})
	return nil
}

func (h *handler) listGroups(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	resp, err := h.srv.ListGroups(r.Context(), r.URL.Query().Get("after"))
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) getGroup(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	resp, err := h.srv.GetGroup(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) setGroup(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	var req api.GroupSpec
	if err := decodeAdmin(r, &req); err != nil {
		return err
	}
	resp, err := h.srv.SetGroup(r.Context(), call, r.PathValue("name"), &req)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func scopeOf(q url.Values) (api.ConfigScope, error) {
	s := api.ConfigScope{Group: q.Get("group"), DeviceID: q.Get("device")}
	if err := s.Validate(); err != nil {
		return s, &decodeError{err}
	}
	return s, nil
}

func (h *handler) showConfig(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	q := r.URL.Query()
	scope, err := scopeOf(q)
	if err != nil {
		return err
	}
	version, err := queryInt(q, "version")
	if err != nil {
		return err
	}
	resp, err := h.srv.ShowConfig(r.Context(), scope, uint64(version))
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) setConfig(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	var req api.ConfigSetRequest
	if err := decodeAdmin(r, &req); err != nil {
		return err
	}
	resp, err := h.srv.SetConfig(r.Context(), call, &req)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) configHistory(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	q := r.URL.Query()
	scope, err := scopeOf(q)
	if err != nil {
		return err
	}
	limit, err := queryInt(q, "limit")
	if err != nil {
		return err
	}
	before, err := queryInt(q, "before")
	if err != nil {
		return err
	}
	resp, err := h.srv.ConfigHistory(r.Context(), scope, limit, uint64(before))
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) rollbackConfig(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	var req api.ConfigRollbackRequest
	if err := decodeAdmin(r, &req); err != nil {
		return err
	}
	resp, err := h.srv.RollbackConfig(r.Context(), call, &req)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) listCertificates(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	q := r.URL.Query()
	limit, err := queryInt(q, "limit")
	if err != nil {
		return err
	}
	revoked := false
	if v := q.Get("revoked"); v != "" {
		if revoked, err = strconv.ParseBool(v); err != nil {
			return badQuery("revoked=%.20q must be true or false", v)
		}
	}
	resp, err := h.srv.ListCertificates(r.Context(), enrollserver.CertQuery{DeviceID: q.Get("device"), Revoked: revoked, After: q.Get("after"), Limit: limit})
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) auditLog(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	q := r.URL.Query()
	limit, err := queryInt(q, "limit")
	if err != nil {
		return err
	}
	after, err := enrollserver.ParseUintToken(q.Get("after"))
	if err != nil {
		return &decodeError{err}
	}
	var since time.Time
	if v := q.Get("since"); v != "" {
		if since, err = time.Parse(time.RFC3339, v); err != nil {
			return badQuery("since=%.40q must be an RFC 3339 time such as 2026-01-02T15:04:05Z", v)
		}
	}
	for _, name := range []string{"actor", "action", "target"} {
		if len(q.Get(name)) > api.MaxReasonLen {
			return badQuery("%s is limited to %d bytes", name, api.MaxReasonLen)
		}
	}
	resp, err := h.srv.AuditLog(r.Context(), enrollserver.AuditQuery{After: after, Since: since, Actor: q.Get("actor"), Action: q.Get("action"), Target: q.Get("target"), Limit: limit})
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) issueOperator(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	var req api.OperatorIssueRequest
	if err := decodeAdmin(r, &req); err != nil {
		return err
	}
	resp, err := h.srv.IssueOperator(r.Context(), call, &req)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) revokeOperator(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	var req api.OperatorRevokeRequest
	if err := decodeAdmin(r, &req); err != nil {
		return err
	}
	resp, err := h.srv.RevokeOperator(r.Context(), call, &req)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) listFirmware(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	q := r.URL.Query()
	limit, err := queryInt(q, "limit")
	if err != nil {
		return err
	}
	retired := false
	if v := q.Get("retired"); v != "" {
		if retired, err = strconv.ParseBool(v); err != nil {
			return badQuery("retired=%.20q must be true or false", v)
		}
	}
	if g := q.Get("group"); g != "" {
		if err := api.ValidateGroupName(g); err != nil {
			return &decodeError{err}
		}
	}
	resp, err := h.srv.ListFirmware(r.Context(), enrollserver.FirmwareQuery{Group: q.Get("group"), Retired: retired, After: q.Get("after"), Limit: limit})
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) addFirmware(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	var req api.FirmwareAddRequest
	if err := decodeAdmin(r, &req); err != nil {
		return err
	}
	resp, err := h.srv.AddFirmware(r.Context(), call, &req)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

func (h *handler) retireFirmware(w http.ResponseWriter, r *http.Request, call *enrollserver.Call) error {
	var req api.FirmwareRetireRequest
	if err := decodeAdmin(r, &req); err != nil {
		return err
	}
	resp, err := h.srv.RetireFirmware(r.Context(), call, &req)
	if err != nil {
		return err
	}
	writeJSON(w, call.CorrelationID, resp)
	return nil
}

// ContentTypeCRL is the media type of a DER CRL (RFC 5280 section 4.2.1.13).
const ContentTypeCRL = "application/pkix-crl"

func (h *handler) crl(w http.ResponseWriter, r *http.Request) {
	der, err := h.srv.CRL(r.Context())
	if err != nil {
		h.fail(w, r, correlationID(r), err)
		return
	}
	w.Header().Set("Content-Type", ContentTypeCRL)
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(der)
}

func (h *handler) crlPEM(w http.ResponseWriter, r *http.Request) {
	crls, err := h.srv.CRLs(r.Context())
	if err != nil {
		h.fail(w, r, correlationID(r), err)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(pki.EncodeCRLsPEM(crls))
}
