package daemon

import (
	"crypto/tls"
	"fmt"
)

// TLS 1.3 key exchange choices (Config.TLSKeyExchange, enrolld
// --tls-key-exchange).
const (
	// TLSKeyExchangeHybrid prefers the post-quantum hybrid X25519MLKEM768
	// and accepts X25519, then the NIST curves, from clients without it:
	// Go's defaults. It costs the server about 115-150 µs of CPU more per
	// full handshake than X25519 (enroll-bench ceiling: ~457 µs against
	// ~343 µs on a 2-core EPYC), and protects recorded enrollment traffic
	// against a future quantum computer.
	TLSKeyExchangeHybrid = "hybrid"
	// TLSKeyExchangeX25519 offers X25519, then the NIST curves, and no
	// post-quantum hybrid: a cheaper handshake without harvest-now,
	// decrypt-later protection.
	TLSKeyExchangeX25519 = "x25519"
	// TLSKeyExchangeP256 offers only ECDHE over P-256 (for FIPS-minded
	// deployments). Go clients, which send X25519MLKEM768 and X25519
	// shares first, then need a HelloRetryRequest: one more round trip.
	TLSKeyExchangeP256 = "p256"
)

// TLSKeyExchanges lists the accepted Config.TLSKeyExchange values.
var TLSKeyExchanges = []string{TLSKeyExchangeHybrid, TLSKeyExchangeX25519, TLSKeyExchangeP256}

// tlsCurves maps a key exchange choice to tls.Config.CurvePreferences.
// Hybrid returns nil, Go's default order, so it follows the standard
// library as that evolves.
func tlsCurves(kex string) ([]tls.CurveID, error) {
	switch kex {
	case "", TLSKeyExchangeHybrid:
		return nil, nil
	case TLSKeyExchangeX25519:
		return []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}, nil
	case TLSKeyExchangeP256:
		return []tls.CurveID{tls.CurveP256}, nil
	}
	return nil, fmt.Errorf("--tls-key-exchange %q: want %s, %s or %s", kex, TLSKeyExchangeHybrid, TLSKeyExchangeX25519, TLSKeyExchangeP256)
}
