package tpmdev

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

// tpmHeaderSize is the TPM 2.0 response header: tag (2), size (4),
// response code (4). TPM 2.0 Part 1, section 18.
const tpmHeaderSize = 10

// maxTPMResponse bounds one response; the TPM spec's largest
// (TPM2_GetCapability, NV reads) stay far below 64 KiB.
const maxTPMResponse = 64 << 10

// commandTimeout bounds one command on a network TPM. Key generation on
// a software TPM takes well under a second; a stalled socket must not hang
// the agent.
const commandTimeout = 30 * time.Second

// swtpm is a TPM reached over swtpm's raw TCP data port
// (`swtpm socket --server type=tcp`): commands are written as they are and
// each response is framed by the size in its header.
type swtpm struct {
	mu   sync.Mutex
	conn net.Conn
}

// DialSwtpm connects to swtpm's data port at addr (host:port).
func DialSwtpm(ctx context.Context, addr string) (transport.TPMCloser, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to swtpm at %s: %w", addr, err)
	}
	return &swtpm{conn: conn}, nil
}

// Send implements transport.TPM.
func (s *swtpm) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.conn.SetDeadline(time.Now().Add(commandTimeout)); err != nil {
		return nil, err
	}
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("swtpm: sending command: %w", err)
	}
	hdr := make([]byte, tpmHeaderSize)
	if _, err := io.ReadFull(s.conn, hdr); err != nil {
		return nil, fmt.Errorf("swtpm: reading response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < tpmHeaderSize || size > maxTPMResponse {
		return nil, fmt.Errorf("swtpm: response size %d out of range [%d, %d]", size, tpmHeaderSize, maxTPMResponse)
	}
	resp := make([]byte, size)
	copy(resp, hdr)
	if _, err := io.ReadFull(s.conn, resp[tpmHeaderSize:]); err != nil {
		return nil, fmt.Errorf("swtpm: reading response body: %w", err)
	}
	return resp, nil
}

// Close implements transport.TPMCloser.
func (s *swtpm) Close() error { return s.conn.Close() }
