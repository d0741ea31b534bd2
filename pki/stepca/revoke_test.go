package stepca_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/pki/stepca"
	"github.com/edgeenroll/edgeenroll/pki/stepca/stepcatest"
)

// Revoke reaches step-ca with either credential: step-ca then refuses to
// renew the certificate and lists it on its CRL, while a certificate not
// revoked still renews. Revoking again succeeds (idempotent).
func TestRevoke(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	for _, tt := range []struct {
		name string
		iss  func(t *testing.T) *stepca.Issuer
	}{
		{"JWK", func(t *testing.T) *stepca.Issuer { return newIssuer(t, ca) }},
		{"X5C", func(t *testing.T) *stepca.Issuer { return newX5CIssuer(t, ca, nil) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			iss := tt.iss(t)
			d, kept := newDevice(t), newDevice(t)
			got, err := iss.IssueDevice(context.Background(), d.request(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			other, err := iss.IssueDevice(context.Background(), kept.request(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			// Before: step-ca renews it (so the refusal below is the
			// revocation's doing).
			if _, err := ca.Renew(got.Chain, d.key); err != nil {
				t.Fatalf("renew before the revocation: %v", err)
			}
			serial := got.Leaf.SerialNumber.Text(16)
			if err := iss.Revoke(context.Background(), serial, pki.ReasonKeyCompromise, "stolen"); err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			_, err = ca.Renew(got.Chain, d.key)
			if err == nil || !strings.Contains(err.Error(), "401") {
				t.Errorf("renew after the revocation: %v; want step-ca's 401", err)
			}
			if !slices.Contains(ca.RevokedSerials(t), serial) {
				t.Errorf("serial %s is not on step-ca's CRL", serial)
			}
			if _, err := ca.Renew(other.Chain, kept.key); err != nil {
				t.Errorf("a certificate not revoked no longer renews: %v", err)
			}
			if err := iss.Revoke(context.Background(), serial, pki.ReasonKeyCompromise, "again"); err != nil {
				t.Errorf("Revoke again: %v; want success", err)
			}
		})
	}
}

func TestRevokeRefusals(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	iss := newIssuer(t, ca)
	for _, tt := range []struct {
		name, serial string
		code         int
	}{
		{"empty serial", "", 0},
		{"not hex", "xyz", 0},
		{"0x prefix", "0x1f", 0},
		{"negative", "-1f", 0},
		{"zero", "0", 0},
		{"longer than 20 octets", strings.Repeat("f", 41), 0},
		{"reason code", "1f", 11},
		{"negative reason code", "1f", -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := iss.Revoke(context.Background(), tt.serial, tt.code, "r"); !errors.Is(err, stepca.ErrRequest) {
				t.Errorf("err = %v; want ErrRequest", err)
			}
		})
	}
	t.Run("forged x5c chain", func(t *testing.T) {
		now := time.Now()
		chain, key := stepcatest.NewX5CAuthority(t, "forged").Issue(t, "enrolld", now.Add(-time.Minute), now.Add(time.Hour))
		forged := newX5CIssuer(t, ca, &stepca.X5CCredential{Chain: chain, Key: key})
		if err := forged.Revoke(context.Background(), "1f", 0, "r"); !errors.Is(err, stepca.ErrProvisioner) {
			t.Errorf("err = %v; want ErrProvisioner", err)
		}
	})
	t.Run("step-ca down", func(t *testing.T) {
		down := stepcatest.Start(t, nil)
		iss := newIssuer(t, down)
		down.Stop()
		if err := iss.Revoke(context.Background(), "1f", 0, "r"); !errors.Is(err, stepca.ErrUnavailable) || !errors.Is(err, pki.ErrRevokerUnavailable) {
			t.Errorf("err = %v; want ErrUnavailable and pki.ErrRevokerUnavailable", err)
		}
	})
}

// The serial travels as step-ca compares it: a certificate whose serial
// has a leading zero nibble in hex, or a high bit set, revokes the same.
func TestRevokeSerialForms(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	iss := newIssuer(t, ca)
	for _, serial := range []string{"0abc", "ABCDEF0123", "ff" + strings.Repeat("00", 19)} {
		if err := iss.Revoke(context.Background(), serial, 0, ""); err != nil {
			t.Errorf("Revoke(%s): %v", serial, err)
		}
	}
	want := []string{"abc", "abcdef0123", "ff" + strings.Repeat("00", 19)}
	got := ca.RevokedSerials(t)
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("CRL %v lacks %s", got, w)
		}
	}
}
