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
	"strings"
	"time"

	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/internal/atomicfile"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// BenchConfig is a whole enroll-bench run against a running server.
type BenchConfig struct {
	// ServerURL is the server: https://127.0.0.1:8443 for HTTPS, or
	// mqtts://127.0.0.1:8883 for MQTT through the broker (enrolld's
	// embedded one, or an external broker's bootstrap listener).
	ServerURL string
	// MoreServerURLs are further servers sharing ServerURL's store
	// (HTTPS only): device i begins on server i mod N and finishes on the
	// next one, so every enrollment crosses servers. Their CPU counts
	// with the server's.
	MoreServerURLs []string
	// StorePIDs are the shared store's processes (etcd), reported apart.
	StorePIDs []int
	// MQTTDeviceURL is the broker listener for device-certificate
	// connections when it differs from the bootstrap one (mosquitto);
	// "" means ServerURL; renewals connect to it with their device
	// certificate (see Bench).
	MQTTDeviceURL string
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

// Transport names.
const (
	TransportHTTPS = "https"
	TransportMQTT  = "mqtt"
)

// serverTransport checks a server URL and names its transport.
func serverTransport(raw string) (*url.URL, string, error) {
	u, err := url.Parse(raw)
	if err == nil && u.Host != "" {
		switch u.Scheme {
		case "https":
			return u, TransportHTTPS, nil
		case "mqtts":
			return u, TransportMQTT, nil
		}
	}
	return nil, "", fmt.Errorf("server URL %q: want https://host:port or mqtts://host:port", raw)
}

// Bench makes (or loads) identities, starts the worker pool, finds the
// server process and runs the load.
//
// Over HTTPS each device uses device.NewHTTPSTransport; over MQTT
// (mqtts://) each device, in each phase, gets its own
// device.NewMQTTTransport: its own MQTT connection under its own random
// bootstrap client ID, as a device that is not enrolled yet. Finish
// answers arrive sealed and are opened with sealing.Key(activation secret,
// session ID), the secret coming from the simulated TPM's activation. The
// renew phase is, as over HTTPS, a second full attestation through begin
// and finish, made as an agent makes it: presenting the certificate the
// device was issued in the enroll phase over mutual TLS (over MQTT, on the
// device listener under its device ID), its handshake signed in the
// worker's TPM (Certificates).
func Bench(ctx context.Context, cfg BenchConfig) (*Report, error) {
	env, err := setupBench(ctx, &cfg, append([]string{cfg.ServerURL}, cfg.MoreServerURLs...), cfg.Devices)
	if err != nil {
		return nil, err
	}
	defer env.pool.Close()
	rep, err := env.run(ctx, &cfg, cfg.ServerURL, env.set.Identities[:cfg.Devices])
	if rep != nil {
		rep.Identities = env.idRep
	}
	return rep, err
}

// benchEnv is what runs against one or more servers share: the roots,
// the identities and the worker pool.
type benchEnv struct {
	roots *x509.CertPool
	pool  *Pool
	set   *identitySet
	idRep IdentityReport
	tls   map[string]string // probe result per server URL
}

// setupBench checks the server URLs and reaches each, then loads or makes
// devices identities and starts the pool. The caller closes env.pool.
func setupBench(ctx context.Context, cfg *BenchConfig, urls []string, devices int) (*benchEnv, error) {
	if cfg.Devices <= 0 || devices <= 0 {
		return nil, errors.New("loadgen: Devices must be positive")
	}
	if cfg.Stderr == nil {
		cfg.Stderr = io.Discard
	}
	env := &benchEnv{tls: map[string]string{}}
	for _, raw := range urls {
		if _, _, err := serverTransport(raw); err != nil {
			return nil, err
		}
	}
	if cfg.MQTTDeviceURL != "" {
		if _, tr, err := serverTransport(cfg.MQTTDeviceURL); err != nil || tr != TransportMQTT {
			return nil, fmt.Errorf("MQTT device server %q: want mqtts://host:port", cfg.MQTTDeviceURL)
		}
	}
	rootPEM, err := os.ReadFile(cfg.RootCAFile)
	if err != nil {
		return nil, fmt.Errorf("reading the enrollment root: %w", err)
	}
	env.roots = x509.NewCertPool()
	if !env.roots.AppendCertsFromPEM(rootPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", cfg.RootCAFile)
	}
	mfr, err := tpmsim.LoadOrCreateManufacturer(cfg.ManufacturerDir)
	if err != nil {
		return nil, err
	}
	// Reach the servers before spending time on identities.
	for _, raw := range urls {
		u, _, _ := serverTransport(raw)
		desc, err := probeTLS(ctx, u.Host, env.roots)
		if err != nil {
			return nil, fmt.Errorf("server %s: %w", raw, err)
		}
		env.tls[raw] = desc
	}

	// Identities: load, then make whatever is missing.
	if env.set, err = loadIdentitySet(cfg.IdentitiesFile, mfr); err != nil {
		return nil, err
	}
	env.pool, err = StartPool(ctx, PoolConfig{Workers: cfg.Workers, Seed: env.set.Seed, ManufacturerDir: cfg.ManufacturerDir,
		Command: cfg.WorkerCommand, Stderr: cfg.Stderr})
	if err != nil {
		return nil, err
	}
	env.idRep = IdentityReport{Count: devices}
	if have := len(env.set.Identities); have < devices {
		start := time.Now()
		more, err := CreateIdentities(ctx, env.pool, env.set.Fleet, have, devices, 4*max(cfg.Workers, 1))
		if err != nil {
			env.pool.Close()
			return nil, fmt.Errorf("making identities: %w", err)
		}
		elapsed := time.Since(start)
		env.set.Identities = append(env.set.Identities, more...)
		env.idRep.Created, env.idRep.Seconds = len(more), round3(elapsed.Seconds())
		env.idRep.PerSecond = round3(float64(len(more)) / elapsed.Seconds())
		if cfg.IdentitiesFile != "" {
			if err := env.set.save(cfg.IdentitiesFile); err != nil {
				env.pool.Close()
				return nil, err
			}
		}
	}
	return env, nil
}

// run drives ids against serverURL with the transport its scheme names.
func (env *benchEnv) run(ctx context.Context, cfg *BenchConfig, serverURL string, ids []*Identity) (*Report, error) {
	u, transport, err := serverTransport(serverURL)
	if err != nil {
		return nil, err
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
	name := serverURL
	run.StorePIDs = cfg.StorePIDs
	certs := NewCertificates(env.pool)
	run.Certificates = certs
	if len(cfg.MoreServerURLs) > 0 {
		if transport != TransportHTTPS {
			return nil, errors.New("loadgen: several servers are measured over HTTPS only")
		}
		urls := append([]string{serverURL}, cfg.MoreServerURLs...)
		for _, raw := range cfg.MoreServerURLs {
			mu, _, _ := serverTransport(raw)
			pid, err := loopbackServerPID(mu)
			if err != nil || serverPID == 0 {
				fmt.Fprintf(cfg.Stderr, "enroll-bench: no server CPU figures for %s: %v\n", raw, err)
				serverPID = 0
				break
			}
			run.MoreServerPIDs = append(run.MoreServerPIDs, pid)
		}
		if run.Transport == nil {
			roots := env.roots
			run.TransportName = transport
			run.Transport = func(id *Identity) (device.Transport, error) {
				i := id.Index % len(urls)
				return SplitTransport{
					BeginOn:  device.NewHTTPSTransport(urls[i], roots, certs.For(id)),
					FinishOn: device.NewHTTPSTransport(urls[(i+1)%len(urls)], roots, certs.For(id)),
				}, nil
			}
		}
		name = strings.Join(urls, ",")
	}
	run.Identities = ids
	run.Prover = env.pool
	run.Roots = env.roots
	run.ServerPID = serverPID
	run.DevicePIDs = env.pool.PIDs()
	run.ServerName = name
	if run.Transport == nil {
		run.TransportName = transport
		roots := env.roots
		switch transport {
		case TransportHTTPS:
			run.Transport = func(id *Identity) (device.Transport, error) {
				return device.NewHTTPSTransport(serverURL, roots, certs.For(id)), nil
			}
		case TransportMQTT:
			devURL := cfg.MQTTDeviceURL
			run.Transport = func(id *Identity) (device.Transport, error) {
				return device.NewMQTTTransport(serverURL, devURL, roots, certs.For(id))
			}
		}
	}
	rep, err := Run(ctx, run)
	if rep != nil {
		rep.Identities = IdentityReport{Count: len(ids)}
		rep.Setup.Workers = max(cfg.Workers, 1)
		rep.Setup.TLS = env.tls[serverURL]
	}
	return rep, err
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
