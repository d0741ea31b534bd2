package admission_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
)

// clock is a settable clock for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Unix(1_700_000_000, 0)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newController(t *testing.T, o admission.Options) *admission.Controller {
	t.Helper()
	if o.RetryJitter == 0 {
		o.RetryJitter = -1
	}
	c, err := admission.New(&o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Invariant: every test leaves nothing queued; permits it
		// holds are its own business.
		if s := c.Stats(); s.Queued != 0 {
			t.Errorf("on cleanup: %d still queued", s.Queued)
		}
	})
	return c
}

func mustAcquire(t *testing.T, c *admission.Controller, r admission.Request) *admission.Permit {
	t.Helper()
	p, err := c.Acquire(context.Background(), r)
	if err != nil {
		t.Fatalf("acquire %+v: %v", r, err)
	}
	return p
}

func mustEnter(t *testing.T, c *admission.Controller, r admission.Request) *admission.Ticket {
	t.Helper()
	tk, err := c.Enter(r)
	if err != nil {
		t.Fatalf("enter %+v: %v", r, err)
	}
	return tk
}

func refusal(t *testing.T, err error, want admission.Reason) *admission.RefusedError {
	t.Helper()
	var re *admission.RefusedError
	if !errors.As(err, &re) || re.Reason != want || !errors.Is(err, admission.ErrRefused) {
		t.Fatalf("got %v, want a refusal for %s", err, want)
	}
	return re
}

// order starts Wait on each ticket and returns the names in the order
// they were granted, releasing each permit as it comes: with one slot,
// exactly one request runs at a time.
func order(t *testing.T, first *admission.Permit, tickets map[string]*admission.Ticket) []string {
	t.Helper()
	type grant struct {
		name string
		p    *admission.Permit
	}
	granted := make(chan grant)
	for name, tk := range tickets {
		go func() {
			p, err := tk.Wait(context.Background())
			if err != nil {
				t.Errorf("%s: %v", name, err)
				p = nil
			}
			granted <- grant{name, p}
		}()
	}
	// Let every waiter block before the slot frees up (Wait only
	// observes: the queue order was fixed by Enter).
	first.Release()
	var got []string
	for range tickets {
		g := <-granted
		got = append(got, g.name)
		if g.p != nil {
			g.p.Release()
		}
	}
	return got
}

// TestPriority: a freed slot goes to the highest class queued; within a
// class a finish (Continues) goes before a begin; within a level clients
// take turns, each in its own arrival order.
func TestPriority(t *testing.T) {
	c := newController(t, admission.Options{Slots: 1})
	hold := mustAcquire(t, c, admission.Request{})
	tickets := map[string]*admission.Ticket{}
	for _, e := range []struct {
		name string
		r    admission.Request
	}{
		{"enroll-begin-x1", admission.Request{Class: admission.ClassEnroll, KeyKind: admission.KeyAddress, Key: "x"}},
		{"enroll-begin-x2", admission.Request{Class: admission.ClassEnroll, KeyKind: admission.KeyAddress, Key: "x"}},
		{"enroll-begin-x3", admission.Request{Class: admission.ClassEnroll, KeyKind: admission.KeyAddress, Key: "x"}},
		{"enroll-begin-y1", admission.Request{Class: admission.ClassEnroll, KeyKind: admission.KeyAddress, Key: "y"}},
		{"enroll-finish", admission.Request{Class: admission.ClassEnroll, Continues: true, KeyKind: admission.KeyAddress, Key: "z"}},
		{"renew-begin", admission.Request{Class: admission.ClassRenew, KeyKind: admission.KeyDevice, Key: "d1"}},
		{"renew-finish", admission.Request{Class: admission.ClassRenew, Continues: true, KeyKind: admission.KeyDevice, Key: "d2"}},
		{"urgent-begin", admission.Request{Class: admission.ClassRenewUrgent, KeyKind: admission.KeyDevice, Key: "d3"}},
	} {
		tickets[e.name] = mustEnter(t, c, e.r)
	}
	if s := c.Stats(); s.InFlight != 1 || s.Queued != len(tickets) {
		t.Fatalf("stats %+v, want 1 in flight and %d queued", s, len(tickets))
	}
	got := strings.Join(order(t, hold, tickets), " ")
	want := "urgent-begin renew-finish renew-begin enroll-finish enroll-begin-x1 enroll-begin-y1 enroll-begin-x2 enroll-begin-x3"
	if got != want {
		t.Errorf("admission order\n got %s\nwant %s", got, want)
	}
	if s := c.Stats(); s.InFlight != 0 || s.Queued != 0 {
		t.Errorf("after: %+v", s)
	}
}

// TestQueueBound: a full queue refuses new requests of the same level and
// client, sheds its lowest class for a higher one, and sheds the largest
// client's newest request for a client with less than its share.
func TestQueueBound(t *testing.T) {
	c := newController(t, admission.Options{Slots: 1, MaxQueue: 3, ServiceTime: time.Second})
	hold := mustAcquire(t, c, admission.Request{})
	enroll := func(key string) admission.Request {
		return admission.Request{Class: admission.ClassEnroll, KeyKind: admission.KeyAddress, Key: key}
	}
	x1, x2 := mustEnter(t, c, enroll("x")), mustEnter(t, c, enroll("x"))
	y1 := mustEnter(t, c, enroll("y"))

	// Same client, same level: refused, Retry-After = 1 s × 3 / 1.
	_, err := c.Enter(enroll("x"))
	if re := refusal(t, err, admission.ReasonQueueFull); re.RetryAfter != 3*time.Second || re.RetryAfterSeconds() != 3 || re.Class != admission.ClassEnroll {
		t.Errorf("refusal %+v, want Retry-After 3 s", re)
	}
	// Another client holding one (y) may not displace x's second: x
	// holds 2, y would hold 2.
	if _, err := c.Enter(enroll("y")); err == nil {
		t.Fatal("y took a place beyond its share")
	}
	// A new client z holds none: x (2 > 0+1) gives up its newest.
	z1 := mustEnter(t, c, enroll("z"))
	if _, err := x2.Wait(context.Background()); err != nil {
		refusal(t, err, admission.ReasonDisplaced)
	} else {
		t.Fatal("x's newest request kept its place")
	}
	// A renewal displaces the newest request of the largest client at
	// the lowest level (x1, y1 and z1 tie at one each: any one goes).
	r1 := mustEnter(t, c, admission.Request{Class: admission.ClassRenew, KeyKind: admission.KeyDevice, Key: "d"})
	left := map[string]*admission.Ticket{"r1": r1}
	displaced := 0
	for name, tk := range map[string]*admission.Ticket{"x1": x1, "y1": y1, "z1": z1} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		_, err := tk.Wait(ctx)
		cancel()
		if errors.Is(err, admission.ErrRefused) {
			refusal(t, err, admission.ReasonDisplaced)
			displaced++
			continue
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: %v", name, err)
		}
		// Waiting ran out: it left the queue. Queue it again.
		left[name] = mustEnter(t, c, enroll(name[:1]))
	}
	if displaced != 1 {
		t.Fatalf("%d enrollments displaced by the renewal, want 1", displaced)
	}
	got := order(t, hold, left)
	if got[0] != "r1" {
		t.Errorf("order %v, want the renewal first", got)
	}
}

// TestRetryAfter: Retry-After is the EWMA of service time × queued /
// slots, rounded up to whole seconds and clamped to [1 s, 60 s], spread
// by the jitter.
func TestRetryAfter(t *testing.T) {
	clk := newClock()
	full := func(t *testing.T, o admission.Options) (*admission.Controller, []*admission.Permit, []*admission.Ticket) {
		t.Helper()
		o.Slots, o.MaxQueue, o.Now = 2, 4, clk.Now
		c := newController(t, o)
		var held []*admission.Permit
		for range 2 {
			held = append(held, mustAcquire(t, c, admission.Request{}))
		}
		var queued []*admission.Ticket
		for range 4 {
			queued = append(queued, mustEnter(t, c, admission.Request{}))
		}
		t.Cleanup(func() {
			for _, tk := range queued {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				if p, err := tk.Wait(ctx); err == nil {
					p.Release()
				}
			}
			for _, p := range held {
				p.Release()
			}
		})
		return c, held, queued
	}
	retryAfter := func(t *testing.T, c *admission.Controller) time.Duration {
		t.Helper()
		_, err := c.Enter(admission.Request{})
		return refusal(t, err, admission.ReasonQueueFull).RetryAfter
	}
	for _, tc := range []struct {
		name    string
		service time.Duration
		jitter  float64
		rnd     float64
		want    time.Duration
	}{
		{"exact", time.Second, -1, 0, 2 * time.Second},                  // 1 s × 4 / 2
		{"rounded up", 1100 * time.Millisecond, -1, 0, 3 * time.Second}, // 2.2 s
		{"at least a second", 100 * time.Millisecond, -1, 0, time.Second},
		{"at most a minute", time.Minute, -1, 0, time.Minute},
		{"jitter", time.Second, 0.5, 0.99, 3 * time.Second}, // 2 s × 1.495
		{"no draw", time.Second, 0.5, 0, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, _ := full(t, admission.Options{ServiceTime: tc.service, RetryJitter: tc.jitter, Rand: func() float64 { return tc.rnd }})
			if got := retryAfter(t, c); got != tc.want {
				t.Errorf("Retry-After %s, want %s", got, tc.want)
			}
		})
	}
	t.Run("follows service time", func(t *testing.T) {
		c, held, queued := full(t, admission.Options{ServiceTime: time.Second})
		// One request took 11 s: EWMA 1 s + 0.1 × (11 s − 1 s) = 2 s.
		// Its slot went to the first queued request.
		clk.Advance(11 * time.Second)
		held[0].Release()
		p, err := queued[0].Wait(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		held[0], queued[0] = p, mustEnter(t, c, admission.Request{})
		if s := c.Stats(); s.ServiceTime != 2*time.Second || s.Queued != 4 {
			t.Fatalf("stats %+v, want service time 2 s and 4 queued", s)
		}
		// 2 s × 4 / 2 = 4 s.
		if got := retryAfter(t, c); got != 4*time.Second {
			t.Errorf("Retry-After %s, want 4 s", got)
		}
	})
}

// TestQueueWait: a request leaves the queue when MaxWait passes (refused
// with a Retry-After) or its context ends.
func TestQueueWait(t *testing.T) {
	c := newController(t, admission.Options{Slots: 1, MaxWait: 50 * time.Millisecond})
	hold := mustAcquire(t, c, admission.Request{})
	defer hold.Release()
	start := time.Now()
	_, err := c.Acquire(context.Background(), admission.Request{Class: admission.ClassRenew})
	re := refusal(t, err, admission.ReasonQueueTimeout)
	if waited := time.Since(start); waited < 50*time.Millisecond || waited > 5*time.Second || re.RetryAfter < time.Second {
		t.Errorf("waited %s, refusal %+v", waited, re)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tk := mustEnter(t, c, admission.Request{})
	cancel()
	if _, err := tk.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled wait: %v", err)
	}
	if s := c.Stats(); s.Queued != 0 || s.InFlight != 1 {
		t.Errorf("stats %+v, want nothing queued", s)
	}
}

// TestRateLimit: each client has a token bucket; an empty one refuses at
// once with the time to the next token, and other clients are not
// affected. Addresses and devices have their own rates.
func TestRateLimit(t *testing.T) {
	clk := newClock()
	c := newController(t, admission.Options{Slots: 8, DeviceRate: 0.5, DeviceBurst: 2, AddressRate: 10, AddressBurst: 3, Now: clk.Now})
	try := func(kind admission.KeyKind, key string) error {
		p, err := c.Acquire(context.Background(), admission.Request{KeyKind: kind, Key: key})
		if err == nil {
			p.Release()
		}
		return err
	}
	for i := range 2 {
		if err := try(admission.KeyDevice, "flood"); err != nil {
			t.Fatalf("request %d within the burst: %v", i, err)
		}
	}
	re := refusal(t, try(admission.KeyDevice, "flood"), admission.ReasonRateLimited)
	if re.RetryAfter != 2*time.Second { // a token every 2 s
		t.Errorf("Retry-After %s, want 2 s", re.RetryAfter)
	}
	// The refusal took no token: 2 s later one request passes.
	if err := try(admission.KeyDevice, "other"); err != nil {
		t.Errorf("another device: %v", err)
	}
	if err := try(admission.KeyAddress, "flood"); err != nil {
		t.Errorf("an address of the same name: %v", err)
	}
	clk.Advance(2 * time.Second)
	if err := try(admission.KeyDevice, "flood"); err != nil {
		t.Errorf("after 2 s: %v", err)
	}
	refusal(t, try(admission.KeyDevice, "flood"), admission.ReasonRateLimited)
	// Addresses: burst 3 at 10/s (full again after 2 s).
	for range 3 {
		if err := try(admission.KeyAddress, "flood"); err != nil {
			t.Fatal(err)
		}
	}
	if re := refusal(t, try(admission.KeyAddress, "flood"), admission.ReasonRateLimited); re.RetryAfter != time.Second {
		t.Errorf("address Retry-After %s, want the 1 s minimum", re.RetryAfter)
	}
	// No key, no limit.
	for range 20 {
		if err := try(admission.KeyNone, ""); err != nil {
			t.Fatal(err)
		}
	}
}

// TestClientBound: at most MaxClients buckets are kept; the least
// recently used is forgotten (and starts again full).
func TestClientBound(t *testing.T) {
	clk := newClock()
	c := newController(t, admission.Options{DeviceRate: 0.001, DeviceBurst: 1, MaxClients: 3, Now: clk.Now})
	try := func(key string) error {
		p, err := c.Acquire(context.Background(), admission.Request{KeyKind: admission.KeyDevice, Key: key})
		if err == nil {
			p.Release()
		}
		return err
	}
	for _, k := range []string{"a", "b", "c"} {
		if err := try(k); err != nil {
			t.Fatal(err)
		}
	}
	refusal(t, try("a"), admission.ReasonRateLimited) // a is now the most recent
	if err := try("d"); err != nil {                  // b, the least recent, goes
		t.Fatal(err)
	}
	if got := c.Stats().Clients; got != 3 {
		t.Errorf("%d buckets kept, want 3", got)
	}
	refusal(t, try("a"), admission.ReasonRateLimited) // still remembered
	if err := try("b"); err != nil {                  // forgotten: a full bucket again
		t.Errorf("forgotten client: %v", err)
	}
	for i := range 1000 {
		try(string(rune('A' + i)))
	}
	if got := c.Stats().Clients; got != 3 {
		t.Errorf("%d buckets kept after 1000 clients, want 3", got)
	}
}

func TestRenewalClass(t *testing.T) {
	nb := time.Unix(0, 0)
	na := nb.Add(60 * time.Hour)
	for _, tc := range []struct {
		now  time.Duration // since notBefore
		want admission.Class
	}{
		{0, admission.ClassRenew},
		{40 * time.Hour, admission.ClassRenew}, // the agent's usual 2/3
		{49 * time.Hour, admission.ClassRenew},
		{50 * time.Hour, admission.ClassRenewUrgent}, // 1/6 left
		{61 * time.Hour, admission.ClassRenewUrgent},
	} {
		if got := admission.RenewalClass(nb, na, nb.Add(tc.now)); got != tc.want {
			t.Errorf("at %s: %s, want %s", tc.now, got, tc.want)
		}
	}
	if got := admission.RenewalClass(na, nb, nb); got != admission.ClassRenewUrgent {
		t.Errorf("inverted validity: %s", got)
	}
}

func TestOptions(t *testing.T) {
	_, err := admission.New(&admission.Options{Slots: -1, MaxWait: -time.Second, DeviceRate: -1})
	if err == nil {
		t.Fatal("negative options accepted")
	}
	for _, name := range []string{"Slots", "MaxWait", "DeviceRate"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
	c, err := admission.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.ServiceTime != admission.DefaultServiceTime {
		t.Errorf("defaults: %+v", s)
	}
	if _, err := c.Enter(admission.Request{Class: 7}); err == nil {
		t.Error("unknown class accepted")
	}
	c.Close()
	if _, err := c.Enter(admission.Request{}); !errors.Is(err, admission.ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

// TestMetrics: the collectors count admissions, waits and refusals.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := newController(t, admission.Options{Slots: 1, MaxQueue: 1, Registerer: reg, ConstLabels: prometheus.Labels{"transport": "test"}})
	hold := mustAcquire(t, c, admission.Request{})
	tk := mustEnter(t, c, admission.Request{Class: admission.ClassRenew})
	if _, err := c.Enter(admission.Request{}); err == nil {
		t.Fatal("admitted past a full queue")
	}
	if got := gaugeValue(t, reg, "edgeenroll_admission_queue_length"); got != 1 {
		t.Errorf("queue length %v", got)
	}
	hold.Release()
	p, err := tk.Wait(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p.Release()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		n += len(mf.GetMetric())
	}
	if n != 5 { // shed{queue_full,enroll}, wait{enroll}, wait{renew}, two gauges
		t.Errorf("%d series, want 5", n)
	}
	for _, mf := range mfs {
		if mf.GetName() == "edgeenroll_admission_shed_total" {
			lp := mf.GetMetric()[0].GetLabel()
			if len(lp) != 3 || mf.GetMetric()[0].GetCounter().GetValue() != 1 {
				t.Errorf("shed series %v", mf.GetMetric()[0])
			}
		}
	}
}

// gaugeValue reads a gauge without labels from reg.
func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestConcurrent: under random load with cancellations, in-flight work
// never exceeds the slots and everything is accounted for at the end.
func TestConcurrent(t *testing.T) {
	const slots = 3
	c := newController(t, admission.Options{Slots: slots, MaxQueue: 20, MaxWait: 200 * time.Millisecond})
	var running, peak, granted, refused atomic.Int64
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 200 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(r.IntN(3000))*time.Microsecond)
				p, err := c.Acquire(ctx, admission.Request{Class: admission.Class(r.IntN(3)), Continues: r.IntN(2) == 0,
					KeyKind: admission.KeyNone, Key: string(rune('a' + r.IntN(5)))})
				cancel()
				if err != nil {
					refused.Add(1)
					continue
				}
				granted.Add(1)
				n := running.Add(1)
				for {
					old := peak.Load()
					if n <= old || peak.CompareAndSwap(old, n) {
						break
					}
				}
				time.Sleep(time.Duration(r.IntN(200)) * time.Microsecond)
				running.Add(-1)
				p.Release()
				p.Release() // a second release does nothing
			}
		}()
	}
	wg.Wait()
	if s := c.Stats(); s.InFlight != 0 || s.Queued != 0 {
		t.Errorf("after: %+v", s)
	}
	if peak.Load() > slots || granted.Load() == 0 {
		t.Errorf("peak %d in flight (slots %d), %d granted, %d refused", peak.Load(), slots, granted.Load(), refused.Load())
	}
	t.Logf("%d granted, %d refused or canceled, peak %d", granted.Load(), refused.Load(), peak.Load())
}

func TestDefault(t *testing.T) {
	c := admission.Default()
	defer c.Close()
	// The default controller admits up to DefaultSlots at once.
	var permits []*admission.Permit
	for range admission.DefaultSlots() {
		tk, err := c.Enter(admission.Request{Class: admission.ClassEnroll, KeyKind: admission.KeyDevice, Key: "d" + strconv.Itoa(len(permits))})
		if err != nil {
			t.Fatal(err)
		}
		p, err := tk.Wait(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		permits = append(permits, p)
	}
	if st := c.Stats(); st.InFlight != admission.DefaultSlots() || st.Queued != 0 {
		t.Errorf("stats %+v, want %d in flight", st, admission.DefaultSlots())
	}
	for _, p := range permits {
		p.Release()
	}
}

// Cancel frees the slot a ticket was granted, or takes it out of the
// queue.
func TestTicketCancel(t *testing.T) {
	c, err := admission.New(&admission.Options{Slots: 1, MaxQueue: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := func(k string) admission.Request {
		return admission.Request{Class: admission.ClassEnroll, KeyKind: admission.KeyDevice, Key: k}
	}
	granted, err := c.Enter(req("a")) // takes the free slot
	if err != nil {
		t.Fatal(err)
	}
	queued, err := c.Enter(req("b"))
	if err != nil {
		t.Fatal(err)
	}
	queued.Cancel()
	if st := c.Stats(); st.Queued != 0 || st.InFlight != 1 {
		t.Fatalf("after cancelling the queued ticket: %+v", st)
	}
	granted.Cancel()
	if st := c.Stats(); st.Queued != 0 || st.InFlight != 0 {
		t.Fatalf("after cancelling the granted ticket: %+v", st)
	}
}

// TestYield: a request that yields its permit (waiting on the disk, not
// the CPU) frees its slot for the next one at once; its own Release then
// does nothing, and a context without a permit yields nothing.
func TestYield(t *testing.T) {
	c := newController(t, admission.Options{Slots: 1, MaxQueue: 4})
	req := func(k string) admission.Request {
		return admission.Request{Class: admission.ClassEnroll, KeyKind: admission.KeyDevice, Key: k}
	}
	first := mustAcquire(t, c, req("a"))
	ctx := admission.WithPermit(context.Background(), first)
	waiting := mustEnter(t, c, req("b"))
	if st := c.Stats(); st.InFlight != 1 || st.Queued != 1 {
		t.Fatalf("before yielding: %+v, want 1 in flight and 1 queued", st)
	}
	admission.Yield(ctx)
	wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	second, err := waiting.Wait(wctx)
	if err != nil {
		t.Fatalf("the queued request did not get the yielded slot: %v", err)
	}
	first.Release() // the holder's deferred Release: a no-op now
	if st := c.Stats(); st.InFlight != 1 || st.Queued != 0 {
		t.Fatalf("after the yielded permit's Release: %+v, want only the second in flight", st)
	}
	admission.Yield(context.Background()) // no permit: nothing happens
	second.Release()
	if st := c.Stats(); st.InFlight != 0 {
		t.Fatalf("after all released: %+v", st)
	}
}
