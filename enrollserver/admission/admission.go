package admission

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Class is a request's priority class, from lowest to highest.
type Class int

// Classes, in priority order: a queued request of a higher class is
// admitted before any of a lower one, and when the queue is full the
// lowest class is shed first.
const (
	// ClassEnroll: a first enrollment (no device certificate).
	ClassEnroll Class = iota
	// ClassRenew: a device that holds a valid certificate re-attests.
	ClassRenew
	// ClassRenewUrgent: a renewal whose certificate is near its end (see
	// RenewalClass): if it is refused for long, the device drops out.
	ClassRenewUrgent
	numClasses
)

func (c Class) String() string {
	switch c {
	case ClassEnroll:
		return "enroll"
	case ClassRenew:
		return "renew"
	case ClassRenewUrgent:
		return "renew_urgent"
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// nearExpiryShare: a certificate with at most this share of its lifetime
// left is near expiry. Agents renew at 2/3 of the lifetime (±5%), so a
// renewal arriving with less than 1/6 left has been failing for half its
// renewal window already.
const nearExpiryShare = 1.0 / 6

// RenewalClass classifies the renewal of a device whose current
// certificate is valid from notBefore to notAfter: ClassRenewUrgent when at
// most a sixth of its lifetime is left at now, else ClassRenew. It does NOT
// check the certificate: the caller passes the validity of one the TLS
// handshake (or the broker) verified.
func RenewalClass(notBefore, notAfter, now time.Time) Class {
	life := notAfter.Sub(notBefore)
	if life <= 0 || notAfter.Sub(now) <= time.Duration(float64(life)*nearExpiryShare) {
		return ClassRenewUrgent
	}
	return ClassRenew
}

// KeyKind says what a client key stands for, which selects its rate limit.
type KeyKind int

// Key kinds.
const (
	// KeyNone: no per-client limit; the request queues as one anonymous
	// client.
	KeyNone KeyKind = iota
	// KeyDevice: one device (a verified certificate's device ID, or an
	// MQTT client ID). Limited by Options.DeviceRate.
	KeyDevice
	// KeyAddress: a network address, possibly a NAT hiding many devices.
	// Limited by Options.AddressRate.
	KeyAddress
)

// Request is what the admission decision looks at.
type Request struct {
	Class Class
	// Continues marks a request that continues work already begun (the
	// finish of a begun session): within its class it goes before new
	// work, since refusing it wastes the begin.
	Continues bool
	// KeyKind and Key name the client, for its token bucket and its share
	// of the queue.
	KeyKind KeyKind
	Key     string
}

// numLevels is the number of queue levels: two per class.
const numLevels = int(numClasses) * 2

func (r Request) level() int {
	l := int(r.Class) * 2
	if r.Continues {
		l++
	}
	return l
}

// Options configure a Controller. nil means all defaults; a zero field
// means its default.
type Options struct {
	// Slots is the number of requests worked on at once; 0 means
	// DefaultSlots().
	Slots int
	// MaxQueue bounds the requests waiting for a slot; 0 means 64 per
	// slot.
	MaxQueue int
	// MaxWait bounds one request's wait in the queue; 0 means
	// DefaultMaxWait.
	MaxWait time.Duration
	// ServiceTime seeds the service time estimate; 0 means
	// DefaultServiceTime.
	ServiceTime time.Duration
	// RetryJitter spreads refusals' Retry-After by up to this fraction;
	// 0 means DefaultRetryJitter, negative means none.
	RetryJitter float64
	// DeviceRate (requests per second) and DeviceBurst are the token
	// bucket of a KeyDevice client; 0 means the defaults.
	DeviceRate  float64
	DeviceBurst int
	// AddressRate and AddressBurst are the token bucket of a KeyAddress
	// client; 0 means the defaults.
	AddressRate  float64
	AddressBurst int
	// MaxClients bounds the token buckets kept; 0 means
	// DefaultMaxClients.
	MaxClients int
	// Registerer, if set, receives the controller's collectors, with
	// ConstLabels on each (for instance the transport).
	Registerer  prometheus.Registerer
	ConstLabels prometheus.Labels
	// Now and Rand are test seams: the clock (service times, token
	// buckets) and a uniform [0,1) source for the jitter. nil means
	// time.Now and math/rand/v2. Queue waits use real timers.
	Now  func() time.Time
	Rand func() float64
}

// config is Options validated, with defaults applied.
type config struct {
	slots, maxQueue, maxClients int
	maxWait, serviceTime        time.Duration
	jitter                      float64
	deviceRate, addressRate     rate.Limit
	deviceBurst, addressBurst   int
	now                         func() time.Time
	rand                        func() float64
	registerer                  prometheus.Registerer
	constLabels                 prometheus.Labels
}

// buildConfig applies defaults and reports every invalid option.
func buildConfig(o *Options) (config, error) {
	if o == nil {
		o = &Options{}
	}
	var errs []error
	positive := func(name string, v float64) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative (0 means the default), got %v", name, v))
		}
	}
	positive("Slots", float64(o.Slots))
	positive("MaxQueue", float64(o.MaxQueue))
	positive("MaxWait", float64(o.MaxWait))
	positive("ServiceTime", float64(o.ServiceTime))
	positive("DeviceRate", o.DeviceRate)
	positive("DeviceBurst", float64(o.DeviceBurst))
	positive("AddressRate", o.AddressRate)
	positive("AddressBurst", float64(o.AddressBurst))
	positive("MaxClients", float64(o.MaxClients))
	if err := errors.Join(errs...); err != nil {
		return config{}, fmt.Errorf("admission options: %w", err)
	}
	or := func(v, def int) int {
		if v == 0 {
			return def
		}
		return v
	}
	orD := func(v, def time.Duration) time.Duration {
		if v == 0 {
			return def
		}
		return v
	}
	orF := func(v, def float64) float64 {
		if v == 0 {
			return def
		}
		return v
	}
	c := config{
		slots:        or(o.Slots, DefaultSlots()),
		maxWait:      orD(o.MaxWait, DefaultMaxWait),
		serviceTime:  orD(o.ServiceTime, DefaultServiceTime),
		jitter:       max(orF(o.RetryJitter, DefaultRetryJitter), 0),
		deviceRate:   rate.Limit(orF(o.DeviceRate, DefaultDeviceRate)),
		deviceBurst:  or(o.DeviceBurst, DefaultDeviceBurst),
		addressRate:  rate.Limit(orF(o.AddressRate, DefaultAddressRate)),
		addressBurst: or(o.AddressBurst, DefaultAddressBurst),
		maxClients:   or(o.MaxClients, DefaultMaxClients),
		now:          o.Now,
		rand:         o.Rand,
		registerer:   o.Registerer,
		constLabels:  o.ConstLabels,
	}
	c.maxQueue = or(o.MaxQueue, queuePerSlot*c.slots)
	if c.now == nil {
		c.now = time.Now
	}
	if c.rand == nil {
		c.rand = rand.Float64
	}
	return c, nil
}

// Controller admits requests: at most Slots at once, then up to MaxQueue
// waiting by priority level and, within a level, round robin between
// clients; the rest refused with a Retry-After. It is safe for concurrent
// use.
type Controller struct {
	cfg config
	m   *metrics

	mu       sync.Mutex
	closed   bool
	inFlight int
	queued   int
	levels   [numLevels]level
	// serviceNanos is the EWMA of service time (admission to release).
	serviceNanos float64
	// buckets: client key → element of lru holding a *bucket; the front
	// of lru is the most recently used.
	buckets map[clientKey]*list.Element
	lru     *list.List
}

type level struct {
	keys map[clientKey]*keyQueue
	ring *list.List // of *keyQueue with waiters, in round-robin order
}

// keyQueue is one client's waiters at one level, oldest first.
type keyQueue struct {
	key     clientKey
	waiters *list.List // of *waiter
	inRing  *list.Element
}

// clientKey names a client: its kind and key.
type clientKey struct {
	kind KeyKind
	id   string
}

type bucket struct {
	key clientKey
	lim *rate.Limiter
}

// waiter is one queued request. done is closed once it is decided, with
// permit or err set (under Controller.mu).
type waiter struct {
	req    Request
	kq     *keyQueue
	elem   *list.Element
	queued time.Time // by Options.Now, for the wait histogram
	// deadline is when the wait ends, by the real clock (timers).
	deadline time.Time
	done     chan struct{}
	permit   *Permit
	err      error
}

// New returns a Controller, registering its collectors when
// opts.Registerer is set.
func New(opts *Options) (*Controller, error) {
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, serviceNanos: float64(cfg.serviceTime), buckets: map[clientKey]*list.Element{}, lru: list.New()}
	for i := range c.levels {
		c.levels[i] = level{keys: map[clientKey]*keyQueue{}, ring: list.New()}
	}
	c.m = newMetrics(c, cfg.constLabels)
	if cfg.registerer != nil {
		if err := c.m.register(cfg.registerer); err != nil {
			return nil, fmt.Errorf("admission: registering metrics: %w", err)
		}
	}
	return c, nil
}

// Default returns a controller with the default options and no metrics.
// New cannot fail then: the defaults are valid and nothing is registered.
func Default() *Controller {
	c, _ := New(nil)
	return c
}

// Permit is a slot. The holder must call Release exactly once when the
// request's work is done; further calls do nothing.
type Permit struct {
	c        *Controller
	start    time.Time
	released bool // guarded by c.mu
}

// Release frees the slot (nil: nothing), feeding the service time into the Retry-After
// estimate, and hands it to the next queued request.
func (p *Permit) Release() {
	if p == nil {
		return
	}
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.released {
		return
	}
	p.released = true
	d := c.cfg.now().Sub(p.start)
	c.serviceNanos += ewmaWeight * (float64(max(d, 0)) - c.serviceNanos)
	c.handOff()
}

// permitKey is the context key of the Permit a request holds (WithPermit).
type permitKey struct{}

// WithPermit returns ctx carrying p, so that the code serving the request
// can Yield it.
func WithPermit(ctx context.Context, p *Permit) context.Context {
	return context.WithValue(ctx, permitKey{}, p)
}

// Yield releases the Permit ctx carries (WithPermit), if any, before the
// request waits on something that is not CPU work: a finished enrollment
// waiting for the fsynced commit that makes it durable. Slots bound the
// CPU work in flight; a request waiting on the disk would otherwise hold
// one idle, and fewer concurrent enrollments would reach the store to
// share a commit. The holder's own Release then does nothing.
func Yield(ctx context.Context) {
	if p, _ := ctx.Value(permitKey{}).(*Permit); p != nil {
		p.Release()
	}
}

// ChargeDevice takes a token from device id's bucket (DeviceRate,
// DeviceBurst) on the controller that admitted ctx's request (WithPermit),
// for a request that names its device only in its body (a begin, which
// anyone holding the device's public EK certificate can send). It returns
// 0, or the wait until a token would be free, taking none. Without a
// permit in ctx it charges nothing.
func ChargeDevice(ctx context.Context, id string) time.Duration {
	p, _ := ctx.Value(permitKey{}).(*Permit)
	if p == nil {
		return 0
	}
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.charge(Request{KeyKind: KeyDevice, Key: id}, c.cfg.now())
}

// Ticket is a request that was not refused at once: admitted, or queued.
type Ticket struct {
	c *Controller
	w *waiter
}

// Acquire is Enter then Wait.
func (c *Controller) Acquire(ctx context.Context, req Request) (*Permit, error) {
	t, err := c.Enter(req)
	if err != nil {
		return nil, err
	}
	return t.Wait(ctx)
}

// Enter decides at once what can be decided without waiting: it charges
// the client's token bucket, then admits the request if a slot is free or
// queues it. A refusal is a *RefusedError (or ErrClosed). It never blocks,
// so a transport that reads requests on one goroutine (MQTT) can call it
// there and Wait elsewhere.
func (c *Controller) Enter(req Request) (*Ticket, error) {
	if req.Class < 0 || req.Class >= numClasses {
		return nil, fmt.Errorf("admission: unknown %s", req.Class)
	}
	now := c.cfg.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if d := c.charge(req, now); d > 0 {
		return nil, c.refuse(req, ReasonRateLimited, d)
	}
	w := &waiter{req: req, queued: now, deadline: time.Now().Add(c.cfg.maxWait), done: make(chan struct{})}
	if c.inFlight < c.cfg.slots && c.queued == 0 {
		c.inFlight++
		c.grant(w, now)
		return &Ticket{c: c, w: w}, nil
	}
	if c.queued >= c.cfg.maxQueue {
		victim := c.victim(req)
		if victim == nil {
			return nil, c.refuse(req, ReasonQueueFull, c.drainTime())
		}
		c.unqueue(victim)
		victim.err = c.refuse(victim.req, ReasonDisplaced, c.drainTime())
		close(victim.done)
	}
	c.enqueue(w)
	return &Ticket{c: c, w: w}, nil
}

// Wait waits for the queued request's slot, at most Options.MaxWait since
// Enter. It returns the Permit, a *RefusedError (displaced or timed out),
// ErrClosed, or ctx's error (the request leaves the queue).
func (t *Ticket) Wait(ctx context.Context) (*Permit, error) {
	c, w := t.c, t.w
	select {
	case <-w.done:
		return w.permit, w.err
	default:
	}
	timer := time.NewTimer(time.Until(w.deadline))
	defer timer.Stop()
	var reason error
	select {
	case <-w.done:
		return w.permit, w.err
	case <-ctx.Done():
		reason = ctx.Err()
	case <-timer.C:
	}
	c.mu.Lock()
	select {
	case <-w.done: // decided meanwhile
		c.mu.Unlock()
		if w.permit != nil && reason != nil {
			w.permit.Release()
			return nil, reason
		}
		return w.permit, w.err
	default:
	}
	c.unqueue(w)
	if reason != nil {
		c.m.abandoned.WithLabelValues(w.req.Class.String()).Inc()
		w.err = reason
	} else {
		w.err = c.refuse(w.req, ReasonQueueTimeout, c.drainTime())
	}
	close(w.done)
	c.mu.Unlock()
	return nil, w.err
}

// Cancel gives the request up without waiting: it leaves the queue, or
// the slot it was granted is released.
func (t *Ticket) Cancel() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if p, _ := t.Wait(ctx); p != nil {
		p.Release()
	}
}

// Close refuses queued requests with ErrClosed, and every later Enter.
// Permits held stay valid.
func (c *Controller) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for i := range c.levels {
		for c.levels[i].ring.Len() > 0 {
			kq := c.levels[i].ring.Front().Value.(*keyQueue)
			w := kq.waiters.Front().Value.(*waiter)
			c.unqueue(w)
			w.err = ErrClosed
			close(w.done)
		}
	}
}

// Stats is a snapshot of the controller.
type Stats struct {
	InFlight, Queued int
	// ServiceTime is the current service time estimate.
	ServiceTime time.Duration
	// Clients is the number of token buckets kept.
	Clients int
}

// Stats returns a snapshot.
func (c *Controller) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{InFlight: c.inFlight, Queued: c.queued, ServiceTime: time.Duration(c.serviceNanos), Clients: len(c.buckets)}
}

// charge takes a token from the client's bucket; if it holds none, it
// takes nothing and returns the wait until it would. Called with c.mu.
func (c *Controller) charge(req Request, now time.Time) time.Duration {
	var lim rate.Limit
	var burst int
	switch req.KeyKind {
	case KeyDevice:
		lim, burst = c.cfg.deviceRate, c.cfg.deviceBurst
	case KeyAddress:
		lim, burst = c.cfg.addressRate, c.cfg.addressBurst
	default:
		return 0
	}
	k := clientKey{req.KeyKind, req.Key}
	var b *bucket
	if e, ok := c.buckets[k]; ok {
		c.lru.MoveToFront(e)
		b = e.Value.(*bucket)
	} else {
		for len(c.buckets) >= c.cfg.maxClients {
			oldest := c.lru.Back()
			delete(c.buckets, oldest.Value.(*bucket).key)
			c.lru.Remove(oldest)
		}
		b = &bucket{key: k, lim: rate.NewLimiter(lim, burst)}
		c.buckets[k] = c.lru.PushFront(b)
	}
	r := b.lim.ReserveN(now, 1)
	if !r.OK() {
		return c.cfg.maxWait
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d
	}
	return 0
}

// grant gives w a slot already counted in inFlight. Called with c.mu.
func (c *Controller) grant(w *waiter, now time.Time) {
	w.permit = &Permit{c: c, start: now}
	c.m.wait.WithLabelValues(w.req.Class.String()).Observe(now.Sub(w.queued).Seconds())
	close(w.done)
}

// handOff gives a freed slot to the next queued request: the highest
// level first, round robin between the clients waiting at that level.
// Called with c.mu.
func (c *Controller) handOff() {
	for i := numLevels - 1; i >= 0; i-- {
		lv := &c.levels[i]
		if lv.ring.Len() == 0 {
			continue
		}
		kq := lv.ring.Front().Value.(*keyQueue)
		w := kq.waiters.Front().Value.(*waiter)
		c.unqueue(w)
		if kq.waiters.Len() > 0 { // the client goes to the back of the ring
			lv.ring.MoveToBack(kq.inRing)
		}
		c.grant(w, c.cfg.now())
		return
	}
	c.inFlight--
}

func (c *Controller) enqueue(w *waiter) {
	lv := &c.levels[w.req.level()]
	k := clientKey{w.req.KeyKind, w.req.Key}
	kq := lv.keys[k]
	if kq == nil {
		kq = &keyQueue{key: k, waiters: list.New()}
		lv.keys[k] = kq
		kq.inRing = lv.ring.PushBack(kq)
	}
	w.kq = kq
	w.elem = kq.waiters.PushBack(w)
	c.queued++
}

// unqueue takes w out of the queue. Called with c.mu.
func (c *Controller) unqueue(w *waiter) {
	kq := w.kq
	kq.waiters.Remove(w.elem)
	c.queued--
	if kq.waiters.Len() == 0 {
		lv := &c.levels[w.req.level()]
		lv.ring.Remove(kq.inRing)
		delete(lv.keys, kq.key)
	}
}

// victim picks the request a full queue sheds to make room for req, or
// nil: the newest request of the largest client at the lowest level below
// req's; or, when req's own level is the lowest occupied, the newest of
// the largest other client if it holds more than one request beyond req's
// client's share at that level. Called with c.mu.
func (c *Controller) victim(req Request) *waiter {
	lvl, own := req.level(), clientKey{req.KeyKind, req.Key}
	for i := 0; i <= lvl; i++ {
		lv := &c.levels[i]
		if lv.ring.Len() == 0 {
			continue
		}
		var hog *keyQueue
		for _, kq := range lv.keys {
			if (i < lvl || kq.key != own) && (hog == nil || kq.waiters.Len() > hog.waiters.Len()) {
				hog = kq
			}
		}
		if hog == nil {
			return nil
		}
		if i == lvl {
			mine := 0
			if kq := lv.keys[own]; kq != nil {
				mine = kq.waiters.Len()
			}
			if hog.waiters.Len() <= mine+1 {
				return nil
			}
		}
		return hog.waiters.Back().Value.(*waiter)
	}
	return nil
}

// drainTime estimates how long the queue takes to drain: service time
// (EWMA) × queued / slots. Called with c.mu.
func (c *Controller) drainTime() time.Duration {
	return time.Duration(c.serviceNanos * float64(c.queued) / float64(c.cfg.slots))
}

// refuse counts a refusal and builds its error. Retry-After is d spread
// up by the jitter, rounded UP to whole seconds (a device told to come
// back after the queue drained should not come back before), and clamped
// to [MinRetryAfter, MaxRetryAfter]. Called with c.mu.
func (c *Controller) refuse(req Request, reason Reason, d time.Duration) *RefusedError {
	c.m.shed.WithLabelValues(reason.String(), req.Class.String()).Inc()
	return &RefusedError{Reason: reason, Class: req.Class, RetryAfter: c.retryAfter(d)}
}

func (c *Controller) retryAfter(d time.Duration) time.Duration {
	spread := float64(d) * (1 + c.cfg.jitter*c.cfg.rand())
	secs := math.Ceil(spread / float64(time.Second))
	return min(max(time.Duration(secs)*time.Second, MinRetryAfter), MaxRetryAfter)
}
