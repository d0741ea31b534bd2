package loadgen

import (
	"bufio"
	"context"
	"crypto"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// Answerer is the TPM side of the simulated devices: a Pool of worker
// processes, or one in-process Prover (LocalProver).
type Answerer interface {
	// NewIdentity makes device index's identity with EK nonce.
	NewIdentity(ctx context.Context, index int, nonce []byte) (*Identity, error)
	// Answer runs the TPM half of an enrollment for id.
	Answer(ctx context.Context, id *Identity, br *api.BeginResponse) (*Answer, error)
	// Sign signs digest (of hash) with id's TPM key.
	Sign(ctx context.Context, id *Identity, digest []byte, hash crypto.Hash) ([]byte, error)
}

// Answer is the device's answer to a begin.
type Answer struct {
	Finish *api.FinishRequest
	// Secret is the activation secret the TPM recovered: the device
	// side's, for transports that derive a sealing key from it.
	Secret []byte
	// TPM is the time spent in the TPM, without any queueing before it.
	TPM time.Duration
}

// LocalProver serialises an in-process Prover for concurrent callers.
type LocalProver struct {
	mu sync.Mutex
	P  *Prover
}

// NewIdentity implements Answerer.
func (l *LocalProver) NewIdentity(ctx context.Context, index int, nonce []byte) (*Identity, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return l.P.NewIdentity(index, nonce)
}

// Answer implements Answerer.
func (l *LocalProver) Answer(ctx context.Context, id *Identity, br *api.BeginResponse) (*Answer, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	start := time.Now()
	f, secret, err := l.P.Answer(id, br)
	if err != nil {
		return nil, err
	}
	return &Answer{Finish: f, Secret: secret, TPM: time.Since(start)}, nil
}

// Sign implements Answerer.
func (l *LocalProver) Sign(ctx context.Context, id *Identity, digest []byte, hash crypto.Hash) ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return l.P.Sign(id, digest, hash)
}

// The worker protocol: the parent writes request frames to the worker's
// stdin and reads response frames from its stdout. A frame is the magic
// bytes "EB", a big-endian uint32 length, and that many bytes of JSON. The
// first request is a workerConfig; the worker answers it with a hello once
// its simulator is up, then answers every request in order, one at a time,
// until its stdin ends.
const (
	frameMagic = "EB"
	// maxFrame bounds one message: an identity or a finish request is a
	// few KiB.
	maxFrame = 1 << 20
)

const (
	opIdentity = "identity"
	opAnswer   = "answer"
	opSign     = "sign"
)

// workerConfig is the first frame a worker reads.
type workerConfig struct {
	Seed            int64  `json:"seed"`
	ManufacturerDir string `json:"manufacturer_dir,omitempty"`
}

type workerRequest struct {
	ID       uint64             `json:"id"`
	Op       string             `json:"op"`
	Index    int                `json:"index,omitempty"`
	Nonce    []byte             `json:"nonce,omitempty"`
	Identity *Identity          `json:"identity,omitempty"`
	Begin    *api.BeginResponse `json:"begin,omitempty"`
	Digest   []byte             `json:"digest,omitempty"`
	Hash     crypto.Hash        `json:"hash,omitempty"`
}

type workerResponse struct {
	ID       uint64             `json:"id"`
	Err      string             `json:"err,omitempty"`
	Hello    *workerHello       `json:"hello,omitempty"`
	Identity *Identity          `json:"identity,omitempty"`
	Finish   *api.FinishRequest `json:"finish,omitempty"`
	Secret   []byte             `json:"secret,omitempty"`
	Sig      []byte             `json:"sig,omitempty"`
	// TPMNanos is the time spent serving the request in the TPM.
	TPMNanos int64 `json:"tpm_ns,omitempty"`
}

type workerHello struct {
	PID int `json:"pid"`
}

func writeFrame(w *bufio.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(b), maxFrame)
	}
	var hdr [6]byte
	copy(hdr[:], frameMagic)
	binary.BigEndian.PutUint32(hdr[2:], uint32(len(b)))
	w.Write(hdr[:])
	w.Write(b)
	return w.Flush()
}

// readFrame reads one frame into v. A clean end of stream before a frame
// is io.EOF.
func readFrame(r *bufio.Reader, v any) error {
	var hdr [6]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("truncated frame header: %w", err)
		}
		return err
	}
	if string(hdr[:2]) != frameMagic {
		return fmt.Errorf("bad frame magic %q (stray output on the worker's stdout?)", hdr[:2])
	}
	n := binary.BigEndian.Uint32(hdr[2:])
	if n > maxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", n, maxFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("truncated frame: %w", err)
	}
	return json.Unmarshal(b, v)
}

// ServeWorker is a worker process's main loop: it reads its config from in,
// opens a Prover, and serves requests from in, answering on out, until in
// ends. The cmd that calls it must keep anything else off out: see
// ProtectStdout.
func ServeWorker(in io.Reader, out io.Writer) error {
	r, w := bufio.NewReaderSize(in, 64<<10), bufio.NewWriterSize(out, 64<<10)
	var cfg workerConfig
	if err := readFrame(r, &cfg); err != nil {
		return fmt.Errorf("reading worker config: %w", err)
	}
	var mfr *tpmsim.Manufacturer
	if cfg.ManufacturerDir != "" {
		var err error
		if mfr, err = tpmsim.LoadOrCreateManufacturer(cfg.ManufacturerDir); err != nil {
			return err
		}
	}
	p, err := OpenProver(cfg.Seed, mfr)
	if err != nil {
		writeFrame(w, &workerResponse{Err: err.Error()})
		return err
	}
	defer p.Close()
	if err := writeFrame(w, &workerResponse{Hello: &workerHello{PID: os.Getpid()}}); err != nil {
		return err
	}
	for {
		var req workerRequest
		if err := readFrame(r, &req); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		resp := workerResponse{ID: req.ID}
		start := time.Now()
		switch {
		case req.Op == opIdentity:
			resp.Identity, err = p.NewIdentity(req.Index, req.Nonce)
		case req.Op == opAnswer && req.Identity != nil && req.Begin != nil:
			resp.Finish, resp.Secret, err = p.Answer(req.Identity, req.Begin)
		case req.Op == opSign && req.Identity != nil && len(req.Digest) > 0:
			resp.Sig, err = p.Sign(req.Identity, req.Digest, req.Hash)
		default:
			err = fmt.Errorf("unknown or incomplete request %q", req.Op)
		}
		resp.TPMNanos = int64(time.Since(start))
		if err != nil {
			resp.Err = err.Error()
		}
		if err := writeFrame(w, &resp); err != nil {
			return err
		}
	}
}

// ServeWorkerStdio runs ServeWorker on the process's stdin and stdout,
// first moving stdout out of reach of anything else that prints (the
// simulator's C code): fd 1 then points at stderr.
func ServeWorkerStdio() error {
	out, err := protectStdout()
	if err != nil {
		return err
	}
	defer out.Close()
	return ServeWorker(os.Stdin, out)
}
