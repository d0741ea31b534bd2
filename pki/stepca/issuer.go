package stepca

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.step.sm/crypto/jose"

	"github.com/edgeenroll/edgeenroll/pki"
)

// Issuer asks a step-ca for device certificates. It is safe for concurrent
// use.
type Issuer struct {
	cfg    config
	client *http.Client
	// limits are the provisioner's TLS certificate durations, once Check
	// has read them; nil until then, and step-ca applies them alone.
	limits atomic.Pointer[lifetimeLimits]
}

var _ pki.Issuer = (*Issuer)(nil)

// lifetimeLimits are a provisioner's minTLSCertDuration and
// maxTLSCertDuration; 0 means not set on the provisioner.
type lifetimeLimits struct {
	min, max time.Duration
}

// New validates opts and returns an Issuer. It does no network I/O: call
// Check to find out whether the step-ca accepts the provisioner.
func New(opts Options) (*Issuer, error) {
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	return &Issuer{cfg: cfg, client: newHTTPClient(cfg.roots, cfg.timeout)}, nil
}

// Roots returns a new pool of the step-ca roots every issued chain
// verifies to: what devices, and servers verifying device client
// certificates, must trust besides the enrollment root.
func (iss *Issuer) Roots() *x509.CertPool { return iss.cfg.roots.Clone() }

// URL is the step-ca's base URL.
func (iss *Issuer) URL() string { return iss.cfg.base.String() }

// Close releases idle connections to the step-ca.
func (iss *Issuer) Close() { iss.client.CloseIdleConnections() }

// IssueDevice asks the step-ca to sign req.CSR as the device certificate of
// req.DeviceID. In order, it:
//
//  1. checks the request's form: device ID, public key and lifetime as the
//     embedded CA does (pki's sentinels), and that req.CSR is present,
//     self-signed and carries req.PublicKey (ErrRequest);
//  2. bounds the lifetime by the provisioner's limits, if Check has read
//     them, and, with an X5C credential, ends it no later than the
//     credential's leaf (step-ca refuses a certificate that outlives the
//     credential); a credential not valid now, or one that leaves less than
//     pki.MinLeafLifetime, is ErrCredentialExpired;
//  3. signs a one-time token bound to the CSR and posts it with the CSR and
//     NotAfter = now + lifetime, within Options.Timeout (ErrUnavailable,
//     ErrProvisioner, ErrRefused);
//  4. checks the answer (ErrChain): at most MaxChainCerts certificates;
//     the leaf is for req.PublicKey, names the device exactly as the
//     embedded CA does (common name = device ID, one URI SAN
//     spiffe://<trust domain>/device/<id>, no DNS, IP or email SAN), is
//     not a CA and has no CA key usages, lists ClientAuth and nothing but
//     ClientAuth and ServerAuth among its extended key usages (in
//     particular not CodeSigning or any), is valid now, ends no later than
//     asked and lives at least pki.MinLeafLifetime; and the chain verifies
//     to the step-ca roots for client authentication.
//
// The caller must have decided the device deserves a certificate; see the
// package documentation.
func (iss *Issuer) IssueDevice(ctx context.Context, req pki.DeviceCertRequest) (*pki.Issued, error) {
	// 1. The request's form.
	if err := pki.ValidateDeviceID(req.DeviceID); err != nil {
		return nil, err
	}
	if err := pki.ValidateDevicePublicKey(req.PublicKey); err != nil {
		return nil, err
	}
	lifetime, err := pki.ValidateLeafLifetime(req.Lifetime)
	if err != nil {
		return nil, err
	}
	if req.CSR == nil {
		return nil, fmt.Errorf("%w: no CSR; step-ca signs the device's own CSR, which only the device can sign", ErrRequest)
	}
	if err := req.CSR.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: CSR signature: %w", ErrRequest, err)
	}
	if !publicKeysEqual(req.CSR.PublicKey, req.PublicKey) {
		return nil, fmt.Errorf("%w: the CSR carries another key than the request's", ErrRequest)
	}

	// 2. The provisioner's limits, and the credential's.
	lifetime = iss.bound(lifetime)
	now := iss.cfg.now()
	if err := iss.cfg.cred.checkTime(now, pki.MinLeafLifetime); err != nil {
		return nil, err
	}
	notAfter := now.Add(lifetime).Truncate(time.Second)
	if iss.cfg.cred.isX5C() {
		if end := iss.cfg.cred.x5c.Chain[0].NotAfter; notAfter.After(end) {
			notAfter = end
		}
	}

	// 3. Ask.
	ctx, cancel := context.WithTimeout(ctx, iss.cfg.timeout)
	defer cancel()
	uri := pki.DeviceURI(iss.cfg.trustDomain, req.DeviceID)
	tok, err := iss.cfg.newToken(req.DeviceID, []string{uri.String()}, req.CSR, now)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(signRequest{
		CSR:      string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req.CSR.Raw})),
		OTT:      tok,
		NotAfter: notAfter.UTC().Format(time.RFC3339),
	})
	if err != nil {
		return nil, fmt.Errorf("encoding sign request: %w", err)
	}
	data, err := iss.do(ctx, http.MethodPost, iss.cfg.signURL, body)
	if err != nil {
		return nil, err
	}

	// 4. Check the answer before a device sees it.
	chain, err := parseChain(data)
	if err != nil {
		return nil, err
	}
	if err := iss.checkLeaf(chain, req, notAfter, iss.cfg.now()); err != nil {
		return nil, err
	}
	return &pki.Issued{Leaf: chain[0], Chain: chain}, nil
}

// bound clamps lifetime to the provisioner's limits when they are known.
func (iss *Issuer) bound(lifetime time.Duration) time.Duration {
	l := iss.limits.Load()
	if l == nil {
		return lifetime
	}
	if l.max > 0 && lifetime > l.max {
		lifetime = l.max
	}
	if l.min > 0 && lifetime < l.min {
		lifetime = l.min
	}
	return lifetime
}

// checkLeaf is step 4 of IssueDevice.
func (iss *Issuer) checkLeaf(chain []*x509.Certificate, req pki.DeviceCertRequest, notAfter, now time.Time) error {
	leaf := chain[0]
	if !publicKeysEqual(leaf.PublicKey, req.PublicKey) {
		return fmt.Errorf("%w: the leaf is for another key than the device's", ErrChain)
	}
	id, err := pki.DeviceIDFromCertificate(leaf, iss.cfg.trustDomain)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrChain, err)
	}
	if id != req.DeviceID {
		return fmt.Errorf("%w: the leaf names device %s, not %s", ErrChain, id, req.DeviceID)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) > 0 {
		return fmt.Errorf("%w: the leaf carries DNS, IP or email names (%v %v %v) we did not ask for; check the provisioner's template",
			ErrChain, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.IsCA || leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		return fmt.Errorf("%w: the leaf can act as a CA", ErrChain)
	}
	// crypto/x509 takes a certificate without extended key usages as valid
	// for every use, CodeSigning included: a device holding such a leaf
	// could sign config bundles. Require ClientAuth, allow ServerAuth
	// (step-ca's default template adds it), refuse everything else.
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return fmt.Errorf("%w: the leaf lacks the clientAuth extended key usage", ErrChain)
	}
	for _, u := range leaf.ExtKeyUsage {
		if u != x509.ExtKeyUsageClientAuth && u != x509.ExtKeyUsageServerAuth {
			return fmt.Errorf("%w: the leaf has extended key usage %d; only clientAuth and serverAuth are allowed; check the provisioner's template", ErrChain, u)
		}
	}
	if len(leaf.UnknownExtKeyUsage) > 0 {
		return fmt.Errorf("%w: the leaf has extended key usages %v; only clientAuth and serverAuth are allowed", ErrChain, leaf.UnknownExtKeyUsage)
	}
	if now.Before(leaf.NotBefore.Add(-time.Minute)) || !now.Before(leaf.NotAfter) {
		return fmt.Errorf("%w: the leaf is valid from %s to %s, and now is %s", ErrChain,
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if leaf.NotAfter.After(notAfter) {
		return fmt.Errorf("%w: the leaf expires at %s, after the %s asked for", ErrChain,
			leaf.NotAfter.UTC().Format(time.RFC3339), notAfter.UTC().Format(time.RFC3339))
	}
	if leaf.NotAfter.Sub(now) < pki.MinLeafLifetime {
		return fmt.Errorf("%w: the leaf expires at %s, less than %s from now", ErrChain, leaf.NotAfter.UTC().Format(time.RFC3339), pki.MinLeafLifetime)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: iss.cfg.roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return fmt.Errorf("%w: the chain does not verify to the step-ca roots: %w", ErrChain, err)
	}
	return nil
}

// Check confirms at startup that the step-ca accepts our credential, and
// remembers the provisioner's certificate lifetime limits so IssueDevice
// asks within them. In order:
//
//  1. with an X5C credential, that every certificate of its chain is
//     valid now and its leaf for at least pki.MinLeafLifetime more
//     (ErrCredentialExpired): no device certificate may outlive the leaf,
//     and none may be shorter than that;
//  2. that the step-ca lists a provisioner named Options.Provisioner, of
//     type JWK for a key or X5C for an x5c credential (ErrProvisioner);
//  3. for JWK, that its public key is Options.Key's; for X5C, that the
//     credential's chain verifies to the provisioner's roots, now, for
//     clientAuth, as step-ca verifies every token's x5c header
//     (ErrProvisioner).
//
// An unreachable CA is ErrUnavailable. enrolld calls it at startup;
// IssueDevice and Revoke work without it. CredentialNotAfter says when an
// X5C credential must have been renewed.
func (iss *Issuer) Check(ctx context.Context) error {
	// 1. The credential's own validity.
	if err := iss.cfg.cred.checkTime(iss.cfg.now(), pki.MinLeafLifetime); err != nil {
		return err
	}

	// 2. The provisioner.
	ctx, cancel := context.WithTimeout(ctx, iss.cfg.timeout)
	defer cancel()
	var names []string
	cursor := ""
	for range MaxProvisionerPages {
		u := iss.cfg.provisionersURL + "?limit=100"
		if cursor != "" {
			u += "&cursor=" + url.QueryEscape(cursor)
		}
		data, err := iss.do(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		var page provisionersResponse
		if err := json.Unmarshal(data, &page); err != nil {
			return fmt.Errorf("%w: decoding %s: %w", ErrUnavailable, u, err)
		}
		for _, raw := range page.Provisioners {
			var p provisionerEntry
			if err := json.Unmarshal(raw, &p); err != nil {
				continue // a provisioner type we do not know
			}
			if p.Name != iss.cfg.provisioner {
				names = append(names, p.Name)
				continue
			}
			// 3. Its key or roots.
			return iss.checkProvisioner(p)
		}
		if page.NextCursor == "" || len(page.Provisioners) == 0 {
			break
		}
		cursor = page.NextCursor
	}
	if len(names) > 10 {
		names = append(names[:10], "...")
	}
	return fmt.Errorf("%w: %s has no provisioner named %q (it has %s)", ErrProvisioner, iss.cfg.base, iss.cfg.provisioner, strings.Join(names, ", "))
}

// CredentialNotAfter is when the X5C credential's leaf expires: device
// certificates end no later, and none is issued in its last
// pki.MinLeafLifetime. It is the zero time for a JWK key.
func (iss *Issuer) CredentialNotAfter() time.Time {
	if !iss.cfg.cred.isX5C() {
		return time.Time{}
	}
	return iss.cfg.cred.x5c.Chain[0].NotAfter
}

// Credential names the credential tokens are signed with, for logs: the
// JWK key ID, or the x5c certificate's subject and serial.
func (iss *Issuer) Credential() string { return iss.cfg.cred.String() }

// provisionerEntry is the part of a /1.0/provisioners entry we read.
type provisionerEntry struct {
	Type string           `json:"type"`
	Name string           `json:"name"`
	Key  *jose.JSONWebKey `json:"key"`
	// Roots are an X5C provisioner's roots: PEM (base64 in the JSON).
	Roots  []byte `json:"roots"`
	Claims *struct {
		Min string `json:"minTLSCertDuration"`
		Max string `json:"maxTLSCertDuration"`
	} `json:"claims"`
}

func (iss *Issuer) checkProvisioner(p provisionerEntry) error {
	cred := &iss.cfg.cred
	if !strings.EqualFold(p.Type, cred.kind()) {
		return fmt.Errorf("%w: provisioner %q is of type %s, but the credential (%s) is for a %s provisioner",
			ErrProvisioner, p.Name, p.Type, cred, cred.kind())
	}
	if cred.isX5C() {
		if err := iss.checkX5CRoots(p); err != nil {
			return err
		}
	} else {
		ours := cred.jwk
		switch {
		case p.Key == nil:
			return fmt.Errorf("%w: provisioner %q lists no key", ErrProvisioner, p.Name)
		case p.Key.KeyID != ours.KeyID:
			return fmt.Errorf("%w: provisioner %q has key %s, but the configured key is %s: the key file is not this provisioner's key",
				ErrProvisioner, p.Name, p.Key.KeyID, ours.KeyID)
		case !publicKeysEqual(p.Key.Key, ours.Public().Key):
			return fmt.Errorf("%w: provisioner %q has another public key under key id %s: the key file is not this provisioner's key",
				ErrProvisioner, p.Name, ours.KeyID)
		}
	}
	var l lifetimeLimits
	if p.Claims != nil {
		l.min, _ = time.ParseDuration(p.Claims.Min)
		l.max, _ = time.ParseDuration(p.Claims.Max)
	}
	iss.limits.Store(&l)
	return nil
}

// checkX5CRoots verifies the credential's chain to the roots an X5C
// provisioner lists, as step-ca verifies a token's x5c header.
func (iss *Issuer) checkX5CRoots(p provisionerEntry) error {
	roots := x509.NewCertPool()
	n := 0
	for rest := p.Roots; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil && block.Type == "CERTIFICATE" {
			roots.AddCert(c)
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("%w: provisioner %q lists no roots", ErrProvisioner, p.Name)
	}
	chain := iss.cfg.cred.x5c.Chain
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: iss.cfg.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return fmt.Errorf("%w: the %s does not chain to the roots of provisioner %q: %w", ErrProvisioner, &iss.cfg.cred, p.Name, err)
	}
	return nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && b != nil && k.Equal(b)
}
