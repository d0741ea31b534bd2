// Package etcdtest runs real etcd members in-process for tests: a cluster
// of embedded servers (go.etcd.io/etcd/server/v3/embed) on loopback
// ports, with data in a temporary directory.
//
// It is a test helper, not production code: the members fsync (the
// behaviour under test is real), but election and heartbeat timings are
// short, and the members listen on 127.0.0.1 only, without TLS or auth.
package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Test cluster timings: fast elections, with room for a loaded 2-core
// machine running -race.
const (
	tickMs       = 25
	electionMs   = 250
	readyTimeout = 30 * time.Second
	startTries   = 5
)

// Cluster is a running test cluster.
type Cluster struct {
	mu      sync.Mutex
	members []*embed.Etcd
	clients []string // client URL of each member
	dir     string
	ownsDir bool
}

// StartCluster starts a cluster of n members under t.TempDir() and stops
// it when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := Start(t.TempDir(), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Start starts a cluster of n members with data under dir ("" makes a
// temporary directory that Close removes). It is StartCluster for
// TestMain, where there is no testing.TB: the caller must Close it.
func Start(dir string, n int) (*Cluster, error) {
	owns := false
	if dir == "" {
		d, err := os.MkdirTemp("", "etcdtest-")
		if err != nil {
			return nil, err
		}
		dir, owns = d, true
	}
	var err error
	for try := range startTries {
		var c *Cluster
		// A port picked free may be taken before etcd binds it: pick
		// again.
		if c, err = start(filepath.Join(dir, fmt.Sprintf("try%d", try)), n); err == nil {
			c.dir, c.ownsDir = dir, owns
			return c, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if owns {
		os.RemoveAll(dir)
	}
	return nil, err
}

// freePort returns a loopback port nothing listened on a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func start(dir string, n int) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("etcdtest: %d members", n)
	}
	peers := make([]url.URL, n)
	clients := make([]url.URL, n)
	var initial []string
	for i := range n {
		pp, err := freePort()
		if err != nil {
			return nil, err
		}
		cp, err := freePort()
		if err != nil {
			return nil, err
		}
		peers[i] = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", pp)}
		clients[i] = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", cp)}
		initial = append(initial, fmt.Sprintf("m%d=%s", i, peers[i].String()))
	}
	c := &Cluster{}
	token := fmt.Sprintf("etcdtest-%d", time.Now().UnixNano())
	for i := range n {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(dir, cfg.Name)
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peers[i]}, []url.URL{peers[i]}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{clients[i]}, []url.URL{clients[i]}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = token
		cfg.TickMs, cfg.ElectionMs = tickMs, electionMs
		cfg.LogLevel = "error"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("starting member %s: %w", cfg.Name, err)
		}
		c.members = append(c.members, e)
		c.clients = append(c.clients, clients[i].String())
	}
	deadline := time.After(readyTimeout)
	for i, e := range c.members {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			c.Close()
			return nil, fmt.Errorf("member m%d: %w", i, err)
		case <-deadline:
			c.Close()
			return nil, errors.New("etcdtest: cluster not ready in time")
		}
	}
	return c, nil
}

// Endpoints returns the client URL of every member.
func (c *Cluster) Endpoints() []string { return append([]string(nil), c.clients...) }

// StoreURL is the etcdstore URL of the cluster with key prefix prefix:
// etcd://host:port,host:port…/prefix, as enrolld --store takes it.
func (c *Cluster) StoreURL(prefix string) string {
	hosts := make([]string, len(c.clients))
	for i, e := range c.clients {
		hosts[i] = strings.TrimPrefix(e, "http://")
	}
	return "etcd://" + strings.Join(hosts, ",") + "/" + prefix
}

// Client returns a client of one member only, closed when the test ends.
func (c *Cluster) Client(t testing.TB, member int) *clientv3.Client {
	t.Helper()
	return c.newClient(t, c.clients[member])
}

// ClientAll returns a client of every member (it fails over), closed
// when the test ends.
func (c *Cluster) ClientAll(t testing.TB) *clientv3.Client {
	t.Helper()
	return c.newClient(t, c.clients...)
}

func (c *Cluster) newClient(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialKeepAliveTime: 2 * time.Second, DialKeepAliveTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Stop kills one member (no leadership transfer, as in a crash).
func (c *Cluster) Stop(member int) {
	c.mu.Lock()
	e := c.members[member]
	c.members[member] = nil
	c.mu.Unlock()
	if e != nil {
		e.Server.HardStop()
		e.Close()
	}
}

// Close stops every member and removes the data directory if Start made
// it.
func (c *Cluster) Close() {
	c.mu.Lock()
	members := c.members
	c.members = nil
	c.mu.Unlock()
	for _, e := range members {
		if e != nil {
			e.Close()
		}
	}
	if c.ownsDir {
		os.RemoveAll(c.dir)
	}
}
