package api

import (
	"bytes"
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Device statuses as the admin API reports them.
const (
	StatusPending  = "pending"
	StatusApproved = "approved"
	StatusEnrolled = "enrolled"
	StatusDenied   = "denied"
	StatusRevoked  = "revoked"
	// StatusRefused: the device was admitted but measured boot refused
	// its first enrollment; it holds no certificate. The record keeps
	// the measured firmware (for `enrollctl firmware add --from-device`)
	// and the device enrolls as soon as its boot passes.
	StatusRefused = "refused"
)

// DeviceStatuses lists every status, for validation and help texts.
func DeviceStatuses() []string {
	return []string{StatusPending, StatusApproved, StatusEnrolled, StatusDenied, StatusRevoked, StatusRefused}
}

// Admission policies of a group.
const (
	// AdmissionAuto admits a device whose EK chains to a trusted
	// manufacturer root or was pre-registered.
	AdmissionAuto = "auto"
	// AdmissionManual records the device as pending until an operator
	// approves it.
	AdmissionManual = "manual"
	// AdmissionDeny refuses every device of the group.
	AdmissionDeny = "deny"
)

// DeviceAction names a POST PathAdminDevices + "/" + action call.
type DeviceAction string

// Device actions.
const (
	ActionApprove DeviceAction = "approve"
	ActionDeny    DeviceAction = "deny"
	ActionRevoke  DeviceAction = "revoke"
	ActionReadmit DeviceAction = "readmit"
)

// DeviceActions lists every device action.
func DeviceActions() []DeviceAction {
	return []DeviceAction{ActionApprove, ActionDeny, ActionRevoke, ActionReadmit}
}

// Revocation reason names for DeviceActionRequest.ReasonCode (RFC 5280
// CRLReason).
var RevocationReasonCodes = map[string]int{
	"unspecified":            0,
	"key-compromise":         1,
	"affiliation-changed":    3,
	"superseded":             4,
	"cessation-of-operation": 5,
}

// DeviceActionRequest changes devices named by ID or chosen by a selector
// (group and/or labels, which match pending devices for approve and deny,
// and devices of any status otherwise). At least one of IDs, Group or
// Labels is required; IDs and a selector are exclusive.
type DeviceActionRequest struct {
	DeviceIDs []string          `json:"device_ids,omitempty"`
	Group     string            `json:"group,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Reason is recorded in the audit log and on the device; revoke
	// requires one.
	Reason string `json:"reason,omitempty"`
	// ReasonCode is a key of RevocationReasonCodes (revoke only; default
	// unspecified).
	ReasonCode string `json:"reason_code,omitempty"`
}

// Validate checks the shape of an action request.
func (r *DeviceActionRequest) Validate() error {
	if len(r.DeviceIDs) == 0 && r.Group == "" && len(r.Labels) == 0 {
		return Errorf(CodeBadRequest, "name devices by ID, or select them with a group or labels")
	}
	if len(r.DeviceIDs) > 0 && (r.Group != "" || len(r.Labels) > 0) {
		return Errorf(CodeBadRequest, "device IDs and a group or label selector are exclusive")
	}
	if len(r.DeviceIDs) > MaxDevicesPerAction {
		return Errorf(CodeBadRequest, "%d device IDs, limit is %d per call", len(r.DeviceIDs), MaxDevicesPerAction)
	}
	seen := make(map[string]bool, len(r.DeviceIDs))
	for i, id := range r.DeviceIDs {
		if !ValidDeviceID(id) {
			return Errorf(CodeBadRequest, "device_ids[%d] %.80q must be 64 lowercase hex characters (SHA-256 of the EK public key)", i, id)
		}
		if seen[id] {
			return Errorf(CodeBadRequest, "device_ids[%d] repeats %s", i, id)
		}
		seen[id] = true
	}
	if r.Group != "" {
		if err := ValidateGroupName(r.Group); err != nil {
			return err
		}
	}
	if err := ValidateLabels(r.Labels); err != nil {
		return err
	}
	if err := reasonText("reason", r.Reason); err != nil {
		return err
	}
	if _, ok := RevocationReasonCodes[r.ReasonCode]; r.ReasonCode != "" && !ok {
		return Errorf(CodeBadRequest, "reason_code %.40q is not one of %s", r.ReasonCode, strings.Join(sortedKeys(RevocationReasonCodes), ", "))
	}
	return nil
}

// DeviceActionResult is what an action did to one device.
type DeviceActionResult struct {
	DeviceID string `json:"device_id"`
	// Outcome is "changed", "unchanged" (already in the wanted state) or
	// "refused" (the status does not allow the action; Message says why).
	Outcome string `json:"outcome"`
	Status  string `json:"status"`
	// Code is the refusal's error code (not_found, conflict).
	Code    Code   `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	// RevokedCertificates lists the serials revoke added to the CRL.
	RevokedCertificates []string `json:"revoked_certificates,omitempty"`
}

// Device action outcomes.
const (
	OutcomeChanged   = "changed"
	OutcomeUnchanged = "unchanged"
	OutcomeRefused   = "refused"
)

// DeviceActionResponse answers a device action.
type DeviceActionResponse struct {
	Action  DeviceAction         `json:"action"`
	Results []DeviceActionResult `json:"results"`
	// CRLError is set when a revocation committed (enrolld enforces it
	// already) but the CRL could not be signed again now: relying parties
	// reading the CRL do not see it until the server's refresh loop
	// succeeds.
	CRLError string `json:"crl_error,omitempty"`
}

// DeviceDetail is GET PathAdminDevices/{id}.
type DeviceDetail struct {
	DeviceSummary
	EKIssuer     string            `json:"ek_issuer,omitempty"`
	AgentVersion string            `json:"agent_version,omitempty"`
	Certificates []CertificateInfo `json:"certificates"`
	// EffectiveConfig says which config scope the device's next bundle
	// comes from ("device/<id>", "group/<name>" or "default") and its
	// version.
	ConfigScope   string `json:"config_scope"`
	ConfigVersion uint64 `json:"config_version"`
}

// CertificateInfo is one issued certificate.
type CertificateInfo struct {
	Serial           string    `json:"serial"`
	DeviceID         string    `json:"device_id"`
	NotBefore        time.Time `json:"not_before"`
	NotAfter         time.Time `json:"not_after"`
	Renewal          bool      `json:"renewal"`
	RevokedAt        time.Time `json:"revoked_at,omitzero"`
	RevocationReason string    `json:"revocation_reason,omitempty"`
}

// CertificateList answers GET PathAdminCertificates (query: device,
// revoked=true, after, limit).
type CertificateList struct {
	Certificates  []CertificateInfo `json:"certificates"`
	NextPageToken string            `json:"next_page_token,omitempty"`
}

// StatusResponse answers GET PathAdminStatus.
type StatusResponse struct {
	Version     string         `json:"version"`
	TrustDomain string         `json:"trust_domain"`
	Ready       bool           `json:"ready"`
	ClosedMode  bool           `json:"closed_mode"`
	Devices     map[string]int `json:"devices"`
	// Preregistered counts pre-registrations, Certificates issued
	// certificates and Revoked revoked ones.
	Preregistered int       `json:"preregistered"`
	Certificates  int       `json:"certificates"`
	Revoked       int       `json:"revoked_certificates"`
	AuditRecords  uint64    `json:"audit_records"`
	CRLNumber     uint64    `json:"crl_number"`
	CRLNextUpdate time.Time `json:"crl_next_update,omitzero"`
	MaxPending    int       `json:"max_pending"`
	Operator      string    `json:"operator"`
}

// GroupSpec is what an operator sets on a group (PUT PathAdminGroups/{name}).
type GroupSpec struct {
	// Admission is AdmissionAuto, AdmissionManual or AdmissionDeny.
	Admission string `json:"admission"`
	// CertLifetimeSeconds is the device certificate lifetime; 0 means the
	// server's default.
	CertLifetimeSeconds int64  `json:"cert_lifetime_seconds,omitempty"`
	Description         string `json:"description,omitempty"`
	// MeasuredBoot is MeasuredBootOff ("" means off) or
	// MeasuredBootEnforce.
	MeasuredBoot string `json:"measured_boot,omitempty"`
	// RequireSecureBoot refuses, under enforcement, devices whose log
	// does not show UEFI secure boot on.
	RequireSecureBoot bool `json:"require_secure_boot,omitempty"`
	// RequiredPCRs are PCRs, besides the firmware PCRs 0-7, that devices
	// of the group must quote and their event log must account for
	// (a PCR the log does not measure must be at its reset value).
	RequiredPCRs []int `json:"required_pcrs,omitempty"`
	// ExpectUpdatedAt, in a write, is the UpdatedAt the client read the
	// group with (the zero time: it had no record). The write is then
	// refused with conflict if the group changed since, so that two
	// operators' read-modify-write (enrollctl groups set) cannot undo each
	// other's change. Nil writes unconditionally.
	ExpectUpdatedAt *time.Time `json:"expect_updated_at,omitempty"`
}

// Validate checks a group spec.
func (g *GroupSpec) Validate() error {
	switch g.Admission {
	case AdmissionAuto, AdmissionManual, AdmissionDeny:
	default:
		return Errorf(CodeBadRequest, "admission %.40q must be auto, manual or deny", g.Admission)
	}
	if g.CertLifetimeSeconds < 0 || g.CertLifetimeSeconds > int64(MaxOperatorLifetime/time.Second) {
		return Errorf(CodeBadRequest, "cert_lifetime_seconds %d is outside 0..%d", g.CertLifetimeSeconds, int64(MaxOperatorLifetime/time.Second))
	}
	if err := validateMeasuredBoot(g); err != nil {
		return err
	}
	return reasonText("description", g.Description)
}

// Group is a group as the admin API shows it.
type Group struct {
	Name string `json:"name"`
	GroupSpec
	// Defined is false for a group that only exists in the server's
	// defaults (it has no record; devices in it get the default policy).
	Defined       bool   `json:"defined"`
	ConfigVersion uint64 `json:"config_version,omitempty"`
	// FirmwareReferences counts the group's active approved firmware.
	FirmwareReferences int       `json:"firmware_references"`
	UpdatedAt          time.Time `json:"updated_at,omitzero"`
	UpdatedBy          string    `json:"updated_by,omitempty"`
}

// GroupList answers GET PathAdminGroups.
type GroupList struct {
	DefaultGroup string  `json:"default_group"`
	Groups       []Group `json:"groups"`
	// NextAfter, when more groups follow (MaxPageSize a page), is the
	// after= of the next page.
	NextAfter string `json:"next_after,omitempty"`
}

// ConfigScope names whose config a request is about: exactly one of Group
// and DeviceID.
type ConfigScope struct {
	Group    string `json:"group,omitempty"`
	DeviceID string `json:"device_id,omitempty"`
}

// Validate checks exactly one of the scope's fields is set and valid.
func (s ConfigScope) Validate() error {
	switch {
	case (s.Group == "") == (s.DeviceID == ""):
		return Errorf(CodeBadRequest, "name exactly one of a group or a device")
	case s.Group != "":
		return ValidateGroupName(s.Group)
	case !ValidDeviceID(s.DeviceID):
		return Errorf(CodeBadRequest, "device %.80q must be 64 lowercase hex characters", s.DeviceID)
	}
	return nil
}

// String is "group/<name>" or "device/<id>".
func (s ConfigScope) String() string {
	if s.Group != "" {
		return "group/" + s.Group
	}
	return "device/" + s.DeviceID
}

// ConfigSetRequest creates a new config version (POST PathAdminConfig).
// A group's config is a template: in its string values, ${device_id},
// ${serial}, ${group} and ${label:KEY} are replaced per device.
type ConfigSetRequest struct {
	ConfigScope
	Config  json.RawMessage `json:"config"`
	Comment string          `json:"comment,omitempty"`
}

// Validate checks the scope and that the config is a JSON object within
// MaxConfigBytes.
func (r *ConfigSetRequest) Validate() error {
	if err := r.ConfigScope.Validate(); err != nil {
		return err
	}
	if err := ValidateConfigObject(r.Config); err != nil {
		return err
	}
	return reasonText("comment", r.Comment)
}

// ConfigRollbackRequest creates a new version with the content of an older
// one (POST PathAdminConfigRoll). Versions never go down.
type ConfigRollbackRequest struct {
	ConfigScope
	ToVersion uint64 `json:"to_version"`
	Comment   string `json:"comment,omitempty"`
}

// Validate checks the scope and version.
func (r *ConfigRollbackRequest) Validate() error {
	if err := r.ConfigScope.Validate(); err != nil {
		return err
	}
	if r.ToVersion == 0 {
		return Errorf(CodeBadRequest, "to_version must name an existing version (1 or more)")
	}
	return reasonText("comment", r.Comment)
}

// ConfigVersion is one version of a scope's config.
type ConfigVersion struct {
	Scope   string `json:"scope"`
	Version uint64 `json:"version"`
	// Config is the version's content; a history listing leaves it out
	// (a scope's versions can hold tens of MiB) and gives ConfigSHA256:
	// `enrollctl config show --version N` reads one.
	Config       json.RawMessage `json:"config,omitempty"`
	ConfigSHA256 string          `json:"config_sha256,omitempty"`
	CreatedAt    time.Time       `json:"created_at"`
	CreatedBy    string          `json:"created_by"`
	Comment      string          `json:"comment,omitempty"`
	// RolledBackFrom is the version whose content this one copies.
	RolledBackFrom uint64 `json:"rolled_back_from,omitempty"`
}

// ConfigHistory answers GET PathAdminConfigHist, newest first, without
// each version's content (ConfigVersion.ConfigSHA256 instead).
type ConfigHistory struct {
	Scope    string          `json:"scope"`
	Versions []ConfigVersion `json:"versions"`
	// NextBefore, when there are older versions than this page holds, is
	// the before= of the next page.
	NextBefore uint64 `json:"next_before,omitempty"`
}

// ValidateConfigObject checks b is one JSON object of at most
// MaxConfigBytes and MaxConfigJSONDepth, with no duplicate member names
// and no invalid UTF-8 at any depth. Names are compared exactly: "port"
// and "Port" are two members, as in any map.
func ValidateConfigObject(b json.RawMessage) error {
	if len(b) == 0 {
		return Errorf(CodeBadRequest, "config is required: a JSON object")
	}
	if len(b) > MaxConfigBytes {
		return Errorf(CodeBadRequest, "config is %d bytes, limit is %d", len(b), MaxConfigBytes)
	}
	// Bound the depth before anything recursive (the map decode below,
	// the server's template rendering) reads the config.
	if err := checkConfigDepth(b); err != nil {
		return err
	}
	t := bytes.TrimSpace(b)
	if len(t) == 0 || t[0] != '{' {
		return Errorf(CodeBadRequest, "config must be a JSON object")
	}
	// v2's defaults refuse duplicate names, invalid UTF-8 and trailing
	// data.
	var v map[string]any
	if err := jsonv2.Unmarshal(t, &v); err != nil {
		return Errorf(CodeBadRequest, "config is not a JSON object: %.*s", maxJSONErrorLen, err)
	}
	return nil
}

// checkConfigDepth refuses a config nesting deeper than
// MaxConfigJSONDepth; jsontext reads tokens without recursion, so a deep
// input cannot exhaust the stack here. It reads only until the first value
// closes and leaves every other fault to the decode that follows, which
// meets the same fault at the same place, so it never recurses deeper than
// this walk went.
func checkConfigDepth(b []byte) error {
	dec := jsontext.NewDecoder(bytes.NewReader(b))
	for {
		if _, err := dec.ReadToken(); err != nil {
			return nil
		}
		switch d := dec.StackDepth(); {
		case d > MaxConfigJSONDepth:
			return Errorf(CodeBadRequest, "config nests deeper than %d levels at %.128q", MaxConfigJSONDepth, dec.StackPointer())
		case d == 0:
			return nil
		}
	}
}

// OperatorIssueRequest asks for an operator credential (admin only). The
// client makes the key and sends a PKCS#10 CSR (DER); the key never
// leaves it.
type OperatorIssueRequest struct {
	Name            string `json:"name"`
	Role            string `json:"role"`
	CSR             []byte `json:"csr"`
	LifetimeSeconds int64  `json:"lifetime_seconds,omitempty"`
}

// Validate checks the request's shape; the server checks the CSR.
func (r *OperatorIssueRequest) Validate() error {
	if r.Name == "" || len(r.Name) > 64 {
		return Errorf(CodeBadRequest, "name must be 1 to 64 characters of [a-z0-9._-]")
	}
	switch r.Role {
	case "admin", "operator", "factory", "viewer":
	default:
		return Errorf(CodeBadRequest, "role %.40q must be admin, operator, factory or viewer", r.Role)
	}
	if len(r.CSR) == 0 || len(r.CSR) > MaxCSRBytes {
		return Errorf(CodeBadRequest, "csr must be 1 to %d bytes of DER", MaxCSRBytes)
	}
	if r.LifetimeSeconds < 0 || r.LifetimeSeconds > int64(MaxOperatorLifetime/time.Second) {
		return Errorf(CodeBadRequest, "lifetime_seconds %d is outside 0..%d", r.LifetimeSeconds, int64(MaxOperatorLifetime/time.Second))
	}
	return nil
}

// OperatorIssueResponse carries the new credential's certificates (DER).
type OperatorIssueResponse struct {
	Operator         string    `json:"operator"`
	Serial           string    `json:"serial"`
	NotAfter         time.Time `json:"not_after"`
	CertificateChain [][]byte  `json:"certificate_chain"`
	RootCertificate  []byte    `json:"root_certificate"`
}

// OperatorRevokeRequest revokes an operator credential by the serial
// `enrollctl operators issue` printed (lowercase hex). Every admin call
// checks its credential's serial, on every server sharing the store.
type OperatorRevokeRequest struct {
	Serial string `json:"serial"`
	Reason string `json:"reason,omitempty"`
}

// MaxSerialHexLen bounds a certificate serial in hex: RFC 5280 allows 20
// octets.
const MaxSerialHexLen = 40

// Validate checks the request's shape.
func (r *OperatorRevokeRequest) Validate() error {
	if r.Serial == "" || len(r.Serial) > MaxSerialHexLen {
		return Errorf(CodeBadRequest, "serial must be 1 to %d lowercase hex characters (as `enrollctl operators issue` printed it)", MaxSerialHexLen)
	}
	for _, c := range r.Serial {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return Errorf(CodeBadRequest, "serial %.48q must be lowercase hex", r.Serial)
		}
	}
	if len(r.Serial) > 1 && r.Serial[0] == '0' {
		// Serials are compared as printed, and never printed so.
		return Errorf(CodeBadRequest, "serial %q must be written without leading zeros", r.Serial)
	}
	return text("reason", r.Reason)
}

// OperatorRevokeResponse says whether the revocation is new.
type OperatorRevokeResponse struct {
	Serial string `json:"serial"`
	// Changed is false when the serial was revoked already.
	Changed   bool      `json:"changed"`
	RevokedAt time.Time `json:"revoked_at"`
}

// AuditActor is who did something.
type AuditActor struct {
	// Kind is "operator", "device", "anonymous", "certificate" (a
	// certificate of this CA that names no operator or device) or
	// "system".
	Kind string `json:"kind"`
	Name string `json:"name,omitempty"`
	Role string `json:"role,omitempty"`
}

// String renders an actor as kind:name or operator role/name.
func (a AuditActor) String() string {
	switch {
	case a.Kind == "operator":
		return a.Role + "/" + a.Name
	case a.Name != "":
		return a.Kind + ":" + a.Name
	}
	return a.Kind
}

// AuditRecord is one entry of the append-only audit log.
type AuditRecord struct {
	Seq           uint64          `json:"seq"`
	Time          time.Time       `json:"time"`
	Actor         AuditActor      `json:"actor"`
	Action        string          `json:"action"`
	Target        string          `json:"target,omitempty"`
	Outcome       string          `json:"outcome"`
	Code          Code            `json:"code,omitempty"`
	Message       string          `json:"message,omitempty"`
	Before        json.RawMessage `json:"before,omitempty"`
	After         json.RawMessage `json:"after,omitempty"`
	CorrelationID string          `json:"correlation_id,omitempty"`
}

// AuditList answers GET PathAdminAudit (query: since RFC 3339, actor,
// action, target, after, limit). Records come in sequence order.
type AuditList struct {
	Records       []AuditRecord `json:"records"`
	NextPageToken string        `json:"next_page_token,omitempty"`
}

// ImportRow is one device of a factory import. Line is the row's line in
// the operator's file, echoed in every error about it.
type ImportRow struct {
	Line int `json:"line"`
	// DeviceID (the EK hash) or EKCertificate (DER) names the TPM; with
	// both, they must agree.
	DeviceID      string            `json:"device_id,omitempty"`
	EKCertificate []byte            `json:"ek_certificate,omitempty"`
	Serial        string            `json:"serial,omitempty"`
	Group         string            `json:"group,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
}

// ValidateImportRow checks one row's fields. It does not parse the EK
// certificate: the server and enrollctl derive the device ID from it.
func ValidateImportRow(r *ImportRow) error {
	if r.DeviceID == "" && len(r.EKCertificate) == 0 {
		return Errorf(CodeBadRequest, "give the EK certificate (ek_cert_pem) or the EK hash (ek_hash)")
	}
	if r.DeviceID != "" && !ValidDeviceID(r.DeviceID) {
		return Errorf(CodeBadRequest, "ek_hash %.80q must be 64 lowercase hex characters (SHA-256 of the EK public key)", r.DeviceID)
	}
	if len(r.EKCertificate) > MaxBlobBytes {
		return Errorf(CodeBadRequest, "EK certificate is %d bytes, limit is %d", len(r.EKCertificate), MaxBlobBytes)
	}
	if r.Serial == "" {
		return Errorf(CodeBadRequest, "serial is required")
	}
	if err := ValidateSerial(r.Serial); err != nil {
		return err
	}
	if r.Group != "" {
		if err := ValidateGroupName(r.Group); err != nil {
			return err
		}
	}
	return ValidateLabels(r.Labels)
}

// RowError reports one refused row by its line.
type RowError struct {
	Line   int    `json:"line"`
	Code   Code   `json:"code"`
	Reason string `json:"reason"`
}

// ImportStartRequest opens a staged import (POST PathAdminImports). The
// rows follow in chunks; nothing is applied before the commit, which
// applies them in one transaction.
type ImportStartRequest struct {
	// Source names the file, for the audit log.
	Source string `json:"source,omitempty"`
	// SHA256 is the hex digest of the file, for the audit log.
	SHA256 string `json:"sha256,omitempty"`
	// Partial applies the good rows even if some are refused.
	Partial bool `json:"partial,omitempty"`
	// DryRun checks everything and applies nothing.
	DryRun bool `json:"dry_run,omitempty"`
}

// Validate checks the start request.
func (r *ImportStartRequest) Validate() error {
	if err := reasonText("source", r.Source); err != nil {
		return err
	}
	if r.SHA256 != "" && !ValidDeviceID(r.SHA256) { // same form: 64 lowercase hex
		return Errorf(CodeBadRequest, "sha256 must be 64 lowercase hex characters")
	}
	return nil
}

// ImportStartResponse names the staged import.
type ImportStartResponse struct {
	ImportID        string    `json:"import_id"`
	ExpiresAt       time.Time `json:"expires_at"`
	MaxRowsPerChunk int       `json:"max_rows_per_chunk"`
	MaxChunkBytes   int       `json:"max_chunk_bytes"`
}

// ImportRowsRequest stages one chunk (POST PathAdminImports/{id}/rows).
type ImportRowsRequest struct {
	Rows []ImportRow `json:"rows"`
}

// Validate checks the chunk's size and that lines are positive and
// unique; rows with bad fields are reported as RowErrors, not refused.
func (r *ImportRowsRequest) Validate() error {
	if len(r.Rows) == 0 || len(r.Rows) > MaxImportRowsPerChunk {
		return Errorf(CodeBadRequest, "rows must list 1 to %d rows, got %d", MaxImportRowsPerChunk, len(r.Rows))
	}
	for i, row := range r.Rows {
		if row.Line < 1 {
			return Errorf(CodeBadRequest, "rows[%d].line must be 1 or more", i)
		}
	}
	return nil
}

// ImportRowsResponse reports a staged chunk.
type ImportRowsResponse struct {
	Staged   int        `json:"staged"`
	Rejected []RowError `json:"rejected,omitempty"`
}

// ImportCommitRequest applies a staged import (POST
// PathAdminImports/{id}/commit).
type ImportCommitRequest struct {
	// ClientRejected counts rows enrollctl refused before sending, for
	// the audit log.
	ClientRejected int `json:"client_rejected,omitempty"`
}

// Validate checks the commit request.
func (r *ImportCommitRequest) Validate() error {
	if r.ClientRejected < 0 || r.ClientRejected > MaxImportRows {
		return Errorf(CodeBadRequest, "client_rejected %d is outside 0..%d", r.ClientRejected, MaxImportRows)
	}
	return nil
}

// ImportResult reports what an import did (or, for a dry run or a refused
// all-or-nothing import, would have done).
type ImportResult struct {
	ImportID string `json:"import_id"`
	DryRun   bool   `json:"dry_run"`
	Partial  bool   `json:"partial"`
	// Applied is true when rows were written.
	Applied   bool `json:"applied"`
	Rows      int  `json:"rows"`
	Created   int  `json:"created"`
	Updated   int  `json:"updated"`
	Unchanged int  `json:"unchanged"`
	// RejectedTotal counts refused rows; Rejected lists the first
	// MaxReportedRowErrors by line.
	RejectedTotal   int        `json:"rejected_total"`
	Rejected        []RowError `json:"rejected,omitempty"`
	UndefinedGroups []string   `json:"undefined_groups,omitempty"`
}

// ValidateGroupName accepts 1..MaxGroupLen characters of [A-Za-z0-9._-].
func ValidateGroupName(g string) error {
	if g == "" || len(g) > MaxGroupLen {
		return Errorf(CodeBadRequest, "group %.80q must be 1 to %d characters", g, MaxGroupLen)
	}
	for _, c := range g {
		if !nameChar(c) {
			return Errorf(CodeBadRequest, "group %.80q: use letters, digits, '.', '-' or '_'", g)
		}
	}
	return nil
}

// ValidateSerial accepts 1..MaxSerialLen printable characters without
// control characters, ',' or ';' (the import file's separators).
func ValidateSerial(s string) error {
	if s == "" || len(s) > MaxSerialLen {
		return Errorf(CodeBadRequest, "serial must be 1 to %d bytes", MaxSerialLen)
	}
	if err := text("serial", s); err != nil {
		return err
	}
	if strings.ContainsAny(s, ",;\"") || strings.TrimSpace(s) != s {
		return Errorf(CodeBadRequest, "serial %.80q must not contain ',', ';', '\"' or leading or trailing spaces", s)
	}
	return nil
}

// ValidateLabels checks at most MaxLabels labels, keys of 1..MaxLabelKeyLen
// and values of 0..MaxLabelValueLen characters of [A-Za-z0-9._:/-].
func ValidateLabels(l map[string]string) error {
	if len(l) > MaxLabels {
		return Errorf(CodeBadRequest, "%d labels, limit is %d", len(l), MaxLabels)
	}
	for _, k := range sortedKeys(l) {
		v := l[k]
		if k == "" || len(k) > MaxLabelKeyLen || !allLabelChars(k) {
			return Errorf(CodeBadRequest, "label key %.80q must be 1 to %d characters of letters, digits, '.', '_', ':', '/' or '-'", k, MaxLabelKeyLen)
		}
		if len(v) > MaxLabelValueLen || !allLabelChars(v) {
			return Errorf(CodeBadRequest, "label %s value %.80q must be up to %d characters of letters, digits, '.', '_', ':', '/' or '-'", k, v, MaxLabelValueLen)
		}
	}
	return nil
}

// ParseLabels parses "k=v;k2=v2" (also accepting ',' between pairs when
// sep is ',') into a map and validates it.
func ParseLabels(s string, sep string) (map[string]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, sep) {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, Errorf(CodeBadRequest, "label %.80q must be key=value", kv)
		}
		if _, dup := out[k]; dup {
			return nil, Errorf(CodeBadRequest, "label %.80q is given twice", k)
		}
		out[k] = v
	}
	return out, ValidateLabels(out)
}

// FormatLabels renders labels as sorted "k=v;k2=v2".
func FormatLabels(l map[string]string) string {
	parts := make([]string, 0, len(l))
	for _, k := range sortedKeys(l) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ";")
}

func nameChar(c rune) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_'
}

func allLabelChars(s string) bool {
	for _, c := range s {
		if !nameChar(c) && c != ':' && c != '/' {
			return false
		}
	}
	return true
}

func reasonText(name, s string) error {
	if len(s) > MaxReasonLen {
		return Errorf(CodeBadRequest, "%s is %d bytes, limit is %d", name, len(s), MaxReasonLen)
	}
	return text(name, s)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ValidStatus reports whether s is a device status.
func ValidStatus(s string) bool { return slices.Contains(DeviceStatuses(), s) }
