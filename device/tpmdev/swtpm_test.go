package tpmdev_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/edgeenroll/edgeenroll/device/tpmdev"
)

// fakeTPM answers one command with the response its test gives, then hangs
// up: a stand-in for swtpm's framing only (the real swtpm runs in the e2e
// tests).
func fakeTPM(t *testing.T, respond func(cmd []byte) []byte) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		hdr := make([]byte, 10)
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[2:6])-10)
		io.ReadFull(c, body)
		c.Write(respond(append(hdr, body...)))
	}()
	return ln.Addr().String()
}

func response(size uint32, body int) []byte {
	b := make([]byte, 10+body)
	binary.BigEndian.PutUint16(b, 0x8001)
	binary.BigEndian.PutUint32(b[2:], size)
	return b
}

func TestSwtpmFraming(t *testing.T) {
	cmd := response(12, 2) // any well-formed command
	for _, tc := range []struct {
		name string
		resp []byte
		err  string
	}{
		{"whole response", response(14, 4), ""},
		{"size below header", response(4, 0), "out of range"},
		{"size above limit", response(1<<30, 0), "out of range"},
		{"truncated body", response(100, 4), "reading response body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeTPM(t, func([]byte) []byte { return tc.resp })
			tpm, err := tpmdev.DialSwtpm(context.Background(), addr)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tpm.Send(cmd)
			tpm.Close()
			if tc.err == "" {
				if err != nil || len(got) != len(tc.resp) {
					t.Fatalf("Send = %d bytes, %v", len(got), err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Send error %v, want %q", err, tc.err)
			}
		})
	}
}

func TestOpenRefusesUnknownSpec(t *testing.T) {
	if _, err := tpmdev.Open(context.Background(), "tpm0"); err == nil || !strings.Contains(err.Error(), "swtpm:HOST:PORT") {
		t.Errorf("got %v", err)
	}
}
