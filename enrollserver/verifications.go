package enrollserver

import (
	"crypto"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/attest"
)

// A device that attests again (a renewal: the agent keeps its AK; or a
// begin retried after a lost answer) sends the same EK certificate and the
// same AK creation evidence as before. Verifying them costs two P-256
// signature checks, a chain build and the TPM structures' decoding, about
// an eighth of a renewal's server CPU, and gives the same verdict for the
// same bytes. The server remembers the verdicts that passed, keyed by a
// SHA-256 over every input byte the verification reads, so an input that
// differs in any bit (a forgery, a new AK) misses and is verified in full.
// Refusals are not remembered. What stays fresh at every begin is what
// must: MakeCredential to the EK with a new secret, which only the TPM
// holding both the EK and that AK can answer, then at finish the quote over
// a new nonce, the key certification and the CSR.

// ekVerdict is what begin keeps of an EK certificate that verified: the
// issuer it records, and the window in which the chain that verified is
// valid (the verdict at another time may differ).
type ekVerdict struct {
	issuer      string
	from, until time.Time
}

// verifyEKCertificate is attest.VerifyEKCertificate against the server's
// manufacturer pools, remembered. The verdict depends on the certificate's
// bytes, the EK (its PKIX DER, from which ekPub was parsed; both in the
// key), the pools (New keeps its own copies, so they are fixed for the
// server's life) and the time, which a remembered verdict is used only
// within the window of. It returns the certificate's issuer.
func (s *Server) verifyEKCertificate(certDER, ekPublic []byte, ekPub crypto.PublicKey, now time.Time) (string, error) {
	k := newMemoKey("edgeenroll EK certificate verdict v1")
	k.bytes(certDER)
	k.bytes(ekPublic)
	key := k.sum()
	if v, ok := s.ekVerdicts.get(key); ok && !now.Before(v.from) && !now.After(v.until) {
		s.metrics.verdicts.WithLabelValues("ek_certificate", "hit").Inc()
		return v.issuer, nil
	}
	s.metrics.verdicts.WithLabelValues("ek_certificate", "miss").Inc()
	info, err := attest.VerifyEKCertificate(certDER, ekPub, s.cfg.ManufacturerRoots, s.cfg.ManufacturerIntermediates, now)
	if err != nil {
		return "", err
	}
	v := ekVerdict{issuer: info.Certificate.Issuer.String(), from: info.ValidFrom, until: info.ValidUntil}
	s.ekVerdicts.add(key, v)
	return v.issuer, nil
}

// newActivationChallenge is attest.NewActivationChallenge with the AK's
// creation verdict (attest.VerifyAKParameters) remembered; it also returns
// the verified AK, whose public area is what the session records. That
// verdict is
// a function of the four blobs and the format flag alone, all in the key;
// MakeCredential runs
// every time, with a fresh secret.
func (s *Server) newActivationChallenge(ekPub crypto.PublicKey, p goattest.AttestationParameters) (*attest.AKPublic, []byte, *goattest.EncryptedCredential, error) {
	k := newMemoKey("edgeenroll AK creation verdict v1")
	for _, b := range [][]byte{p.Public, p.CreateData, p.CreateAttestation, p.CreateSignature} {
		k.bytes(b)
	}
	if p.UseTCSDActivationFormat { // refused by VerifyAKParameters
		k.int(1)
	}
	key := k.sum()
	ak, ok := s.akVerdicts.get(key)
	if ok {
		s.metrics.verdicts.WithLabelValues("ak_creation", "hit").Inc()
	} else {
		s.metrics.verdicts.WithLabelValues("ak_creation", "miss").Inc()
		var err error
		if ak, err = attest.VerifyAKParameters(p); err != nil {
			return nil, nil, nil, err
		}
		s.akVerdicts.add(key, ak)
	}
	secret, ec, err := attest.MakeCredential(s.cfg.Rand, ekPub, ak)
	return ak, secret, ec, err
}
