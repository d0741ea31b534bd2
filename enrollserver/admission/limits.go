package admission

import (
	"runtime"
	"time"
)

// Defaults of Options. Every cap of the package is here.
const (
	// slotsPerCPU is in-flight work per GOMAXPROCS. An enrollment is CPU
	// work (EK chain, MakeCredential, quote and signature checks, leaf and
	// bundle signing) plus a store write that waits on fsync. One slot per
	// core keeps the CPU busy only while nobody waits on the disk; a
	// second one per core overlaps that wait and lets bbolt's Batch group
	// the concurrent writes into one fsync. Beyond that, extra in-flight
	// requests only share the same cores, making each one slower and
	// holding its memory longer, with no gain in throughput.
	slotsPerCPU = 2
	// minSlots keeps some overlap on a one-core machine.
	minSlots = 4

	// queuePerSlot sizes the wait queue: at a few milliseconds of service
	// per request this is well under a second of work per slot, enough to
	// absorb a burst without sending devices away, small enough that a
	// queued request (a goroutine and its connection's buffers, tens of
	// kilobytes) cannot add up to more than a few tens of megabytes.
	queuePerSlot = 64

	// DefaultMaxWait bounds the time a request waits in the queue. If the
	// queue stops draining at its usual pace (a slow disk) requests are
	// refused with a Retry-After rather than left to time out at the
	// client (devices give a request 30 s).
	DefaultMaxWait = 5 * time.Second

	// DefaultServiceTime seeds the service time estimate until requests
	// have been measured.
	DefaultServiceTime = 20 * time.Millisecond
	// ewmaWeight is the weight of each new service time in the estimate:
	// the estimate follows a change of pace within a few dozen requests.
	ewmaWeight = 0.1

	// MinRetryAfter and MaxRetryAfter clamp every Retry-After: a device
	// never comes back sooner than a second (the header's resolution), nor
	// is told to stay away longer than a minute on an estimate.
	MinRetryAfter = time.Second
	MaxRetryAfter = time.Minute
	// DefaultRetryJitter spreads the Retry-After of refused requests by up
	// to this fraction, so devices refused in the same instant do not all
	// come back in the same second.
	DefaultRetryJitter = 0.5

	// DefaultDeviceRate and DefaultDeviceBurst limit one device (a client
	// key that stands for one device: its certificate's device ID, or its
	// MQTT client ID). An enrollment is two requests, a renewal every few
	// days two more; retries after a refusal come at most once a second.
	DefaultDeviceRate  = 1.0 // requests per second
	DefaultDeviceBurst = 10
	// DefaultAddressRate and DefaultAddressBurst limit one network address
	// (an HTTPS client without a device certificate). An address may be a
	// site's NAT hiding a fleet that boots at once, so this is a ceiling
	// on one host, not a per-device budget; fairness between addresses
	// under contention comes from the queue, which serves clients round
	// robin and sheds the largest client's requests first.
	DefaultAddressRate  = 500.0
	DefaultAddressBurst = 1000
	// DefaultMaxClients bounds the remembered token buckets (about 200
	// bytes each). The least recently used is forgotten first; a forgotten
	// client starts again with a full bucket.
	DefaultMaxClients = 50000
)

// DefaultSlots is the in-flight limit for this process: slotsPerCPU per
// GOMAXPROCS, at least minSlots.
func DefaultSlots() int { return max(minSlots, slotsPerCPU*runtime.GOMAXPROCS(0)) }
