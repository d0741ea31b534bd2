package loadgen

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/internal/atomicfile"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// BenchConfig is a whole enroll-bench run against a running server.
type BenchConfig struct {
	// ServerURL is the server's base URL (https://127.0.0.1:8443).
	ServerURL string
	// RootCAFile is the enrollment root (PEM) the server's CA created.
	RootCAFile string
	// ManufacturerDir is the test TPM manufacturer CA (tpmsim) whose root
	// the server trusts (--manufacturer-roots DIR/manufacturer_ca.crt);
	// created if missing.
	ManufacturerDir string
	// IdentitiesFile, if set, keeps the identities between runs: loaded
	// when it exists (and extended if it holds too few), written when
	// identities were made.
	IdentitiesFile string
	// Workers is the number of worker processes with a simulator each.
	Workers int
	// WorkerCommand returns a command that serves the worker protocol
	// (ServeWorkerStdio).
	WorkerCommand func() *exec.Cmd
	// ServerPID is the server process for CPU and memory figures; 0 finds
	// the process listening on the URL's port (loopback servers only); -1
	// reports none.
	ServerPID int
	// Run configures the load itself; its Identities, Prover, Transport,
	// Roots, ServerPID and DevicePIDs are filled in by Bench.
	Run Config
	// Devices is the number of devices.
	Devices int
	// Stderr receives the workers' stderr and progress lines.
	Stderr io.Writer
}

// Bench makes (or loads) identities, starts the worker pool, finds the
// server process and runs the load.
func Bench(ctx context.Context, cfg BenchConfig) (*Report, error) {
	if cfg.Devices <= 0 {
		return nil, errors.New("loadgen: Devices must be positive")
	}
	if cfg.Stderr == nil {
		cfg.Stderr = io.Discard
	}
	u, err := url.Parse(cfg.ServerURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("server URL %q: want https://host:port", cfg.ServerURL)
	}
	rootPEM, err := os.ReadFile(cfg.RootCAFile)
	if err != nil {
		return nil, fmt.Errorf("reading the enrollment root: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", cfg.RootCAFile)
	}
	mfr, err := tpmsim.LoadOrCreateManufacturer(cfg.ManufacturerDir)
	if err != nil {
		return nil, err
	}
	// Reach the server before spending time on identities.
	tlsDesc, err := probeTLS(ctx, u.Host, roots)
	if err != nil {
		return nil, fmt.Errorf("server %s: %w", cfg.ServerURL, err)
	}

	// Identities: load, then make whatever is missing.
	set, err := loadIdentitySet(cfg.IdentitiesFile, mfr)
	if err != nil {
		return nil, err
	}
	pool, err := StartPool(ctx, PoolConfig{Workers: cfg.Workers, Seed: set.Seed, ManufacturerDir: cfg.ManufacturerDir,
		Command: cfg.WorkerCommand, Stderr: cfg.Stderr})
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	idRep := IdentityReport{Count: cfg.Devices}
	if have := len(set.Identities); have < cfg.Devices {
		start := time.Now()
		more, err := CreateIdentities(ctx, pool, set.Fleet, have, cfg.Devices, 4*max(cfg.Workers, 1))
		if err != nil {
			return nil, fmt.Errorf("making identities: %w", err)
		}
		elapsed := time.Since(start)
		set.Identities = append(set.Identities, more...)
		idRep.Created, idRep.Seconds = len(more), round3(elapsed.Seconds())
		idRep.PerSecond = round3(float64(len(more)) / elapsed.Seconds())
		if cfg.IdentitiesFile != "" {
			if err := set.save(cfg.IdentitiesFile); err != nil {
				return nil, err
			}
		}
	}

	serverPID := cfg.ServerPID
	if serverPID == 0 {
		if serverPID, err = loopbackServerPID(u); err != nil {
			fmt.Fprintf(cfg.Stderr, "enroll-bench: no server CPU figures: %v (pass --server-pid)\n", err)
			serverPID = 0
		}
	} else if serverPID < 0 {
		serverPID = 0
	}

	run := cfg.Run
	run.Identities = set.Identities[:cfg.Devices]
	run.Prover = pool
	run.Roots = roots
	run.ServerPID = serverPID
	run.DevicePIDs = pool.PIDs()
	run.ServerName = cfg.ServerURL
	if run.Transport == nil {
		run.TransportName = "https"
		run.Transport = func(*Identity) (device.Transport, error) {
			return device.NewHTTPSTransport(cfg.ServerURL, roots, noCertificate{}), nil
		}
	}
	rep, err := Run(ctx, run)
	if rep != nil {
		rep.Identities = idRep
		rep.Setup.Workers = max(cfg.Workers, 1)
		if run.TransportName == "https" {
			rep.Setup.TLS = tlsDesc
		}
	}
	return rep, err
}

// noCertificate is the certificate source of a device that only enrolls.
type noCertificate struct{}

func (noCertificate) TLSCertificate() (*tls.Certificate, error) {
	return nil, errors.New("enroll-bench devices make no mTLS calls")
}

// loopbackServerPID finds the process listening on the URL's port, only
// for a loopback host (a remote server's process is not ours to read).
func loopbackServerPID(u *url.URL) (int, error) {
	host, portStr := u.Hostname(), u.Port()
	if portStr == "" {
		portStr = "443"
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return 0, fmt.Errorf("resolving %s: %v", host, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return 0, fmt.Errorf("server %s is not on loopback", host)
		}
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return 0, err
	}
	return ListenerPID(port)
}

// probeTLS describes the TLS connection a device gets: version and key
// exchange, which dominate the handshake's server cost.
func probeTLS(ctx context.Context, host string, roots *x509.CertPool) (string, error) {
	d := tls.Dialer{Config: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13, ServerName: hostOnly(host)}}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return "", err
	}
	defer c.Close()
	st := c.(*tls.Conn).ConnectionState()
	return tls.VersionName(st.Version) + ", " + st.CurveID.String(), nil
}

func hostOnly(hostport string) string {
	h, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport
	}
	return h
}

// identitySetVersion is the format of identity files.
const identitySetVersion = 1

// identitySet is a fleet of identities made under one simulator seed, as
// kept in an identity file.
type identitySet struct {
	Version int
	Seed    int64
	Fleet   []byte
	// Manufacturer is the DER root that certified the EKs: a file made
	// for another manufacturer is refused, since the server would not
	// trust its devices.
	Manufacturer []byte
	Identities   []*Identity
}

// loadIdentitySet reads path, or returns a new empty set with a random
// seed and fleet when path is "" or does not exist.
func loadIdentitySet(path string, mfr *tpmsim.Manufacturer) (*identitySet, error) {
	if path != "" {
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			var s identitySet
			if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&s); err != nil {
				return nil, fmt.Errorf("identity file %s: %w", path, err)
			}
			if s.Version != identitySetVersion || s.Seed == 0 {
				return nil, fmt.Errorf("identity file %s: unsupported version %d", path, s.Version)
			}
			if !bytes.Equal(s.Manufacturer, mfr.Certificate.Raw) {
				return nil, fmt.Errorf("identity file %s was made with another manufacturer CA than %s", path, mfr.Certificate.Subject)
			}
			return &s, nil
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("reading identity file: %w", err)
		}
	}
	s := &identitySet{Version: identitySetVersion, Manufacturer: mfr.Certificate.Raw, Fleet: make([]byte, 16)}
	if _, err := rand.Read(s.Fleet); err != nil {
		return nil, err
	}
	for s.Seed == 0 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		s.Seed = int64(binary.LittleEndian.Uint64(b[:]) >> 1)
	}
	return s, nil
}

func (s *identitySet) save(path string) error {
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(s); err != nil {
		return fmt.Errorf("encoding identities: %w", err)
	}
	// The file holds TPM blobs of simulated devices and the simulator
	// seed: test material, but nobody else's to read.
	if err := atomicfile.Write(path, b.Bytes(), 0o600); err != nil {
		return fmt.Errorf("writing identity file: %w", err)
	}
	return nil
}
