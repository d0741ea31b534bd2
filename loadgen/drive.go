package loadgen

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// schedule is when one simulated device was due and when it started,
// since the start of its phase.
type schedule struct {
	scheduled, started time.Duration
}

// drivePlan is one phase's driving: N devices, Concurrency at a time, device i
// due i/N of Ramp after the start, with a progress line ("<Label>: 10/100
// <Verb>, 0 failed, 25/s") every ProgressEvery on Progress if set.
type drivePlan struct {
	N, Concurrency int
	Ramp           time.Duration
	Progress       io.Writer
	ProgressEvery  time.Duration
	Label, Verb    string
}

// drive runs device for every index, as l says, and returns the time from
// the start to the last device's end. device gets the index, the phase
// start and the device's schedule, and reports success.
func (l drivePlan) drive(ctx context.Context, device func(i int, start time.Time, s schedule) bool) time.Duration {
	start := time.Now()
	var next, ready, failed atomic.Int64
	var wg sync.WaitGroup
	for range l.Concurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= l.N {
					return
				}
				var s schedule
				s.scheduled = time.Duration(int64(l.Ramp) * int64(i) / int64(l.N))
				if wait := time.Until(start.Add(s.scheduled)); wait > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(wait):
					}
				}
				s.started = time.Since(start)
				if device(i, start, s) {
					ready.Add(1)
				} else {
					failed.Add(1)
				}
			}
		})
	}
	stop := make(chan struct{})
	var progress sync.WaitGroup
	if l.Progress != nil {
		progress.Go(func() {
			t := time.NewTicker(l.ProgressEvery)
			defer t.Stop()
			last, lastT := int64(0), start
			for {
				select {
				case <-stop:
					return
				case now := <-t.C:
					r := ready.Load()
					fmt.Fprintf(l.Progress, "%s: %d/%d %s, %d failed, %.0f/s\n", l.Label, r, l.N, l.Verb, failed.Load(), float64(r-last)/now.Sub(lastT).Seconds())
					last, lastT = r, now
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	progress.Wait()
	return elapsed
}

// rssSampler keeps the highest summed RSS of some processes, read every
// 100 ms until stopped.
type rssSampler struct {
	max  atomic.Uint64
	stop chan struct{}
	done sync.WaitGroup
}

// sampleRSS starts sampling pids (none: a sampler that reads nothing).
func sampleRSS(pids []int) *rssSampler {
	s := &rssSampler{stop: make(chan struct{})}
	if len(pids) == 0 {
		return s
	}
	s.done.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if rss, _ := sumMemory(pids); rss > s.max.Load() {
				s.max.Store(rss)
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	})
	return s
}

// Stop stops sampling and returns the highest RSS seen.
func (s *rssSampler) Stop() uint64 {
	close(s.stop)
	s.done.Wait()
	return s.max.Load()
}
