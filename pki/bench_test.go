package pki_test

import (
	"testing"

	"github.com/edgeenroll/edgeenroll/pki"
)

func BenchmarkIssueDevice(b *testing.B) {
	ca, _ := newCA(b, t0)
	req := pki.DeviceCertRequest{DeviceID: deviceID("bench"), PublicKey: &newP256(b).PublicKey}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ca.IssueDevice(b.Context(), req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSignBundle(b *testing.B) {
	e := newBundleEnv(b)
	bundle := e.bundle()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.ca.SignBundle(bundle); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyBundle(b *testing.B) {
	e := newBundleEnv(b)
	compact := e.sign(b, e.bundle())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := pki.VerifyBundle(compact, e.roots, e.id, e.now); err != nil {
			b.Fatal(err)
		}
	}
}
