package faultproxy_test

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/internal/faultproxy"
)

// echoServer echoes everything back.
func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(addr string, n int) (int, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	go c.Write(make([]byte, n))
	got, err := io.ReadFull(c, make([]byte, n))
	return got, err
}

func TestFaults(t *testing.T) {
	up := echoServer(t)
	for _, tc := range []struct {
		name   string
		faults faultproxy.Faults
		ok     bool
	}{
		{"clean", faultproxy.Faults{}, true},
		{"delay", faultproxy.Faults{Delay: 1, DelayMax: 5 * time.Millisecond}, true},
		{"reset", faultproxy.Faults{Reset: 1, CutMax: 100}, false},
		{"truncate", faultproxy.Faults{Truncate: 1, CutMax: 100}, false},
		{"drop", faultproxy.Faults{Drop: 1, HoldMax: 200 * time.Millisecond}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := faultproxy.Start(up, tc.faults, 1)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			n, err := roundTrip(p.Addr(), 10000)
			if tc.ok && (err != nil || n != 10000) {
				t.Fatalf("clean pass: %d bytes, %v", n, err)
			}
			if !tc.ok && err == nil {
				t.Fatalf("fault %s let all %d bytes through", tc.name, n)
			}
			if s := p.Stats(); s.Conns != 1 {
				t.Errorf("stats = %+v", s)
			}
		})
	}
}
