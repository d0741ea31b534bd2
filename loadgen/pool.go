package loadgen

import (
	"bufio"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
)

// PoolConfig configures a Pool of worker processes.
type PoolConfig struct {
	// Workers is the number of worker processes, each with its own
	// simulator; 0 means 1.
	Workers int
	// Seed is every worker's simulator seed (non-zero): shared, so that
	// any worker can act for any device.
	Seed int64
	// ManufacturerDir is the test manufacturer CA (tpmsim) that certifies
	// EKs of new identities; "" for a pool that only answers.
	ManufacturerDir string
	// Command returns a fresh command that runs ServeWorker on its stdin
	// and stdout (the bench binary's hidden "worker" command). Its Stdin,
	// Stdout and Stderr are set by the pool.
	Command func() *exec.Cmd
	// Stderr receives the workers' stderr; nil discards it.
	Stderr io.Writer
	// StartTimeout bounds a worker's start (simulator up, storage root key
	// made); 0 means a minute.
	StartTimeout time.Duration
	// RequestTimeout bounds each request, queueing included; 0 means a
	// minute (one takes milliseconds).
	RequestTimeout time.Duration
}

// Pool is a set of worker processes, each owning one simulator, that acts
// as the TPMs of all simulated devices. It is safe for concurrent use: a
// request goes to the worker with the fewest requests outstanding.
type Pool struct {
	workers []*workerProc
	nextID  atomic.Uint64
	timeout time.Duration
}

type workerProc struct {
	cmd      *exec.Cmd
	pid      int
	stdin    io.WriteCloser
	wmu      sync.Mutex // guards w
	w        *bufio.Writer
	inflight atomic.Int64

	mu      sync.Mutex // guards pending, err
	pending map[uint64]chan *workerResponse
	err     error // set when the worker is gone
	done    chan struct{}
}

// StartPool starts cfg.Workers workers and waits until each has its
// simulator up.
func StartPool(ctx context.Context, cfg PoolConfig) (*Pool, error) {
	if cfg.Command == nil {
		return nil, errors.New("loadgen: PoolConfig.Command is required")
	}
	if cfg.Seed == 0 {
		return nil, errors.New("loadgen: PoolConfig.Seed must be non-zero")
	}
	n := max(cfg.Workers, 1)
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = time.Minute
	}
	if cfg.Stderr == nil {
		cfg.Stderr = io.Discard
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = time.Minute
	}
	p := &Pool{timeout: cfg.RequestTimeout}
	for range n {
		wp, err := startWorker(ctx, cfg)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.workers = append(p.workers, wp)
	}
	return p, nil
}

func startWorker(ctx context.Context, cfg PoolConfig) (*workerProc, error) {
	cmd := cfg.Command()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cfg.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting worker: %w", err)
	}
	wp := &workerProc{cmd: cmd, pid: cmd.Process.Pid, stdin: stdin, w: bufio.NewWriterSize(stdin, 64<<10),
		pending: map[uint64]chan *workerResponse{}, done: make(chan struct{})}
	r := bufio.NewReaderSize(stdout, 64<<10)
	hello := make(chan error, 1)
	go func() {
		defer close(wp.done)
		var resp workerResponse
		err := readFrame(r, &resp)
		switch {
		case err != nil:
			hello <- fmt.Errorf("worker %d did not start: %w", wp.pid, err)
			return
		case resp.Err != "":
			hello <- fmt.Errorf("worker %d did not start: %s", wp.pid, resp.Err)
			return
		case resp.Hello == nil:
			hello <- fmt.Errorf("worker %d sent no hello", wp.pid)
			return
		}
		hello <- nil
		wp.readLoop(r)
	}()
	wp.wmu.Lock()
	err = writeFrame(wp.w, &workerConfig{Seed: cfg.Seed, ManufacturerDir: cfg.ManufacturerDir})
	wp.wmu.Unlock()
	if err == nil {
		select {
		case err = <-hello:
		case <-time.After(cfg.StartTimeout):
			err = fmt.Errorf("worker %d did not start within %s", wp.pid, cfg.StartTimeout)
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		wp.stop(time.Second)
		return nil, err
	}
	return wp, nil
}

// readLoop delivers responses until the worker's stdout ends.
func (wp *workerProc) readLoop(r *bufio.Reader) {
	var err error
	for {
		var resp workerResponse
		if err = readFrame(r, &resp); err != nil {
			break
		}
		wp.mu.Lock()
		ch := wp.pending[resp.ID]
		delete(wp.pending, resp.ID)
		wp.mu.Unlock()
		if ch != nil {
			ch <- &resp
		}
	}
	if errors.Is(err, io.EOF) {
		err = errors.New("worker exited")
	}
	wp.mu.Lock()
	wp.err = fmt.Errorf("worker %d: %w", wp.pid, err)
	for id, ch := range wp.pending {
		close(ch)
		delete(wp.pending, id)
	}
	wp.mu.Unlock()
}

// errWorkerGone marks a request that failed because its worker exited:
// the pool retries it on another worker.
type errWorkerGone struct{ err error }

func (e errWorkerGone) Error() string { return e.err.Error() }
func (e errWorkerGone) Unwrap() error { return e.err }

// call sends req and waits for its response.
func (wp *workerProc) call(ctx context.Context, req *workerRequest) (*workerResponse, error) {
	ch := make(chan *workerResponse, 1)
	wp.mu.Lock()
	if wp.err != nil {
		err := wp.err
		wp.mu.Unlock()
		return nil, errWorkerGone{err}
	}
	wp.pending[req.ID] = ch
	wp.mu.Unlock()
	wp.inflight.Add(1)
	defer wp.inflight.Add(-1)

	wp.wmu.Lock()
	err := writeFrame(wp.w, req)
	wp.wmu.Unlock()
	if err != nil {
		// The worker is gone (its stdin is closed): no request will get
		// to it again.
		err = fmt.Errorf("worker %d: sending request: %w", wp.pid, err)
		wp.mu.Lock()
		delete(wp.pending, req.ID)
		if wp.err == nil {
			wp.err = err
		}
		wp.mu.Unlock()
		return nil, errWorkerGone{err}
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			wp.mu.Lock()
			err := wp.err
			wp.mu.Unlock()
			return nil, errWorkerGone{err}
		}
		if resp.Err != "" {
			return resp, errors.New(resp.Err)
		}
		return resp, nil
	case <-ctx.Done():
		wp.mu.Lock()
		delete(wp.pending, req.ID)
		wp.mu.Unlock()
		return nil, ctx.Err()
	}
}

// stop closes the worker's stdin, which ends it, and kills it if its
// output has not ended within grace. It then reaps the process.
func (wp *workerProc) stop(grace time.Duration) error {
	wp.stdin.Close()
	select {
	case <-wp.done:
	case <-time.After(grace):
		wp.cmd.Process.Kill()
		<-wp.done
	}
	return wp.cmd.Wait()
}

// pick returns the live worker with the fewest requests outstanding,
// other than those in tried.
func (p *Pool) pick(tried map[*workerProc]bool) (*workerProc, error) {
	var best *workerProc
	for _, wp := range p.workers {
		wp.mu.Lock()
		dead := wp.err != nil
		wp.mu.Unlock()
		if dead || tried[wp] {
			continue
		}
		if best == nil || wp.inflight.Load() < best.inflight.Load() {
			best = wp
		}
	}
	if best == nil {
		return nil, errors.New("loadgen: every worker has exited (see their stderr)")
	}
	return best, nil
}

// do sends req to the least busy worker, and again to another if that
// one exits before answering (bounded by the number of workers).
func (p *Pool) do(ctx context.Context, req *workerRequest) (*workerResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	var err error
	tried := map[*workerProc]bool{}
	for range len(p.workers) {
		var wp *workerProc
		if wp, err = p.pick(tried); err != nil {
			return nil, err
		}
		tried[wp] = true
		req.ID = p.nextID.Add(1)
		resp, cerr := wp.call(ctx, req)
		if !errors.As(cerr, new(errWorkerGone)) {
			return resp, cerr
		}
		err = cerr
	}
	return nil, err
}

// NewIdentity implements Answerer.
func (p *Pool) NewIdentity(ctx context.Context, index int, nonce []byte) (*Identity, error) {
	resp, err := p.do(ctx, &workerRequest{Op: opIdentity, Index: index, Nonce: nonce})
	if err != nil {
		return nil, err
	}
	if resp.Identity == nil {
		return nil, errors.New("worker returned no identity")
	}
	return resp.Identity, nil
}

// Answer implements Answerer.
func (p *Pool) Answer(ctx context.Context, id *Identity, br *api.BeginResponse) (*Answer, error) {
	resp, err := p.do(ctx, &workerRequest{Op: opAnswer, Identity: id, Begin: br})
	if err != nil {
		return nil, err
	}
	if resp.Finish == nil {
		return nil, errors.New("worker returned no answer")
	}
	return &Answer{Finish: resp.Finish, Secret: resp.Secret, TPM: time.Duration(resp.TPMNanos)}, nil
}

// Sign implements Answerer.
func (p *Pool) Sign(ctx context.Context, id *Identity, digest []byte, hash crypto.Hash) ([]byte, error) {
	resp, err := p.do(ctx, &workerRequest{Op: opSign, Identity: id, Digest: digest, Hash: hash})
	if err != nil {
		return nil, err
	}
	if len(resp.Sig) == 0 {
		return nil, errors.New("worker returned no signature")
	}
	return resp.Sig, nil
}

// PIDs are the workers' process IDs, for CPU accounting.
func (p *Pool) PIDs() []int {
	pids := make([]int, len(p.workers))
	for i, wp := range p.workers {
		pids[i] = wp.pid
	}
	return pids
}

// Close ends every worker (closing its stdin; killing it after 5 s).
func (p *Pool) Close() error {
	var errs []error
	for _, wp := range p.workers {
		if err := wp.stop(5 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("worker %d: %w", wp.pid, err))
		}
	}
	p.workers = nil
	return errors.Join(errs...)
}
