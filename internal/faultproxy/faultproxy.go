// Package faultproxy is a TCP proxy that breaks connections on purpose:
// it drops, delays, truncates and resets them at random, for tests of
// clients on flaky links. It forwards to one upstream address on loopback
// and never decides anything from the bytes it carries.
package faultproxy

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Faults are per-connection probabilities (their sum at most 1; the rest
// of the connections pass cleanly) and bounds.
type Faults struct {
	// Drop: the connection is accepted but nothing is forwarded; it is
	// held open for up to HoldMax, then closed.
	Drop float64
	// Reset: after a random number of bytes (up to CutMax) in either
	// direction the connection is reset (RST).
	Reset float64
	// Truncate: after a random number of bytes the connection is closed
	// cleanly (FIN), mid-message.
	Truncate float64
	// Delay: every chunk forwarded waits a random time up to DelayMax.
	Delay float64

	CutMax   int
	HoldMax  time.Duration
	DelayMax time.Duration
}

// Stats count what the proxy did.
type Stats struct {
	Conns, Clean, Dropped, Reset, Truncated, Delayed int64
}

// Proxy is a running fault proxy.
type Proxy struct {
	ln       net.Listener
	upstream string
	faults   Faults
	rngMu    sync.Mutex
	rng      *rand.Rand
	wg       sync.WaitGroup
	closing  chan struct{}

	conns, clean, dropped, reset, truncated, delayed atomic.Int64
}

// Start listens on 127.0.0.1 and forwards to upstream.
func Start(upstream string, f Faults, seed uint64) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if f.CutMax <= 0 {
		f.CutMax = 4096
	}
	if f.HoldMax <= 0 {
		f.HoldMax = 2 * time.Second
	}
	if f.DelayMax <= 0 {
		f.DelayMax = 100 * time.Millisecond
	}
	p := &Proxy{ln: ln, upstream: upstream, faults: f, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), closing: make(chan struct{})}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's listening address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Stats returns the counts so far.
func (p *Proxy) Stats() Stats {
	return Stats{Conns: p.conns.Load(), Clean: p.clean.Load(), Dropped: p.dropped.Load(), Reset: p.reset.Load(),
		Truncated: p.truncated.Load(), Delayed: p.delayed.Load()}
}

// Close stops accepting and closes every connection.
func (p *Proxy) Close() error {
	close(p.closing)
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) float() float64 {
	p.rngMu.Lock()
	defer p.rngMu.Unlock()
	return p.rng.Float64()
}

func (p *Proxy) intn(n int) int {
	p.rngMu.Lock()
	defer p.rngMu.Unlock()
	return p.rng.IntN(n)
}

type fault int

const (
	clean fault = iota
	drop
	reset
	truncate
	delay
)

func (p *Proxy) pick() fault {
	x := p.float()
	f := p.faults
	switch {
	case x < f.Drop:
		return drop
	case x < f.Drop+f.Reset:
		return reset
	case x < f.Drop+f.Reset+f.Truncate:
		return truncate
	case x < f.Drop+f.Reset+f.Truncate+f.Delay:
		return delay
	}
	return clean
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.conns.Add(1)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(c.(*net.TCPConn))
		}()
	}
}

func (p *Proxy) handle(c *net.TCPConn) {
	defer c.Close()
	kind := p.pick()
	if kind == drop {
		p.dropped.Add(1)
		t := time.NewTimer(time.Duration(p.intn(int(p.faults.HoldMax)) + 1))
		defer t.Stop()
		select {
		case <-t.C:
		case <-p.closing:
		}
		return
	}
	up, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		c.SetLinger(0) // upstream down: the client sees a reset
		return
	}
	defer up.Close()
	budget := new(atomic.Int64)
	budget.Store(int64(p.intn(p.faults.CutMax) + 1))
	switch kind {
	case clean:
		p.clean.Add(1)
		budget.Store(-1)
	case reset:
		p.reset.Add(1)
	case truncate:
		p.truncated.Add(1)
	case delay:
		p.delayed.Add(1)
		budget.Store(-1)
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 16<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if kind == delay {
					time.Sleep(time.Duration(p.intn(int(p.faults.DelayMax)) + 1))
				}
				if b := budget.Load(); b >= 0 {
					if int64(n) >= b {
						n = int(b)
						budget.Store(0)
					} else {
						budget.Add(-int64(n))
					}
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
				if budget.Load() == 0 {
					return
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					if tc, ok := dst.(*net.TCPConn); ok {
						tc.CloseWrite()
					}
				}
				return
			}
		}
	}
	go pipe(up, c)
	go pipe(c, up)
	select {
	case <-done:
	case <-p.closing:
	}
	if budget.Load() == 0 {
		if kind == reset {
			c.SetLinger(0)
		}
		return // deferred closes cut both sides
	}
	select {
	case <-done:
	case <-p.closing:
	}
}
