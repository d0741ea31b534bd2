package etcdstore_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/enrollserver/store/etcdstore"
	"github.com/edgeenroll/edgeenroll/enrollserver/store/etcdstore/etcdtest"
	"github.com/edgeenroll/edgeenroll/enrollserver/store/storetest"
)

// cluster is the 3-member cluster every test of the package shares
// (each store under its own prefix); TestMemberStopped starts its own.
var cluster *etcdtest.Cluster

func TestMain(m *testing.M) {
	c, err := etcdtest.Start("", 3)
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting etcd:", err)
		os.Exit(1)
	}
	cluster = c
	code := m.Run()
	c.Close()
	os.Exit(code)
}

// prefix is a key prefix of its own for the running test.
func prefix(t testing.TB) string {
	return "test/" + strings.ReplaceAll(t.Name(), "/", "_") + fmt.Sprintf("/%d/", time.Now().UnixNano())
}

func open(t testing.TB, cli *clientv3.Client, prefix string, opts *etcdstore.Options) *etcdstore.Store {
	t.Helper()
	s, err := etcdstore.OpenClient(t.Context(), cli, prefix, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	cli := cluster.ClientAll(t)
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, cli, prefix(t), nil) })
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func session(id, device string, created time.Time, life time.Duration) *store.Session {
	return &store.Session{ID: id, DeviceID: device, EKPublic: []byte("ek"), AKPublic: []byte("ak"), Nonce: []byte("nonce"),
		ProofHash: []byte("proof"), CreatedAt: created, ExpiresAt: created.Add(life)}
}

func enroll(id, sessionID string) func(prev *store.Device) (*store.Device, *store.AuditRecord, error) {
	return func(prev *store.Device) (*store.Device, *store.AuditRecord, error) {
		d := &store.Device{ID: id, Status: store.StatusEnrolled, LastSessionID: sessionID}
		if prev != nil {
			d.Enrollments = prev.Enrollments
		}
		d.Enrollments++
		return d, &store.AuditRecord{Time: t0, ActorKind: "device", ActorName: id, Action: "certificate.issue", Target: id, Outcome: "success"}, nil
	}
}

// TestFinishRaceAcrossMembers: two servers, each connected to a different
// member, finish the same session: exactly one wins, every time.
func TestFinishRaceAcrossMembers(t *testing.T) {
	ctx := t.Context()
	p := prefix(t)
	a := open(t, cluster.Client(t, 0), p, nil)
	b := open(t, cluster.Client(t, 1), p, nil)
	const rounds = 50
	for i := range rounds {
		id := fmt.Sprintf("s%d", i)
		if err := a.CreateSession(ctx, session(id, "dev1", t0, time.Minute)); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for j, s := range []*etcdstore.Store{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				serial := fmt.Sprintf("c%d-%d", i, j)
				_, errs[j] = s.FinishEnrollment(ctx, id, t0, &store.IssuedCertificate{Serial: serial, DeviceID: "dev1", SessionID: id}, enroll("dev1", id))
			}()
		}
		wg.Wait()
		won, used := 0, 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case errors.Is(err, store.ErrSessionUsed):
				used++
			default:
				t.Fatalf("round %d: %v", i, err)
			}
		}
		if won != 1 || used != 1 {
			t.Fatalf("round %d: %d won, %d refused (%v); want 1 and 1", i, won, used, errs)
		}
	}
	d, err := b.Device(ctx, "dev1")
	if err != nil || d.Enrollments != rounds {
		t.Fatalf("device = %+v, %v; want %d enrollments", d, err, rounds)
	}
	var seqs []uint64
	if err := a.AuditLog(ctx, 0, func(r *store.AuditRecord) bool { seqs = append(seqs, r.Seq); return true }); err != nil {
		t.Fatal(err)
	}
	if len(seqs) != rounds || seqs[rounds-1] != rounds {
		t.Errorf("audit log has %d records, last seq %v; want %d, dense", len(seqs), seqs[len(seqs)-1:], rounds)
	}
	n := 0
	a.Certificates(ctx, "dev1", "", func(*store.IssuedCertificate) bool { n++; return true })
	if n != rounds {
		t.Errorf("%d certificates, want %d (one per round)", n, rounds)
	}
}

// TestAuditDenseUnderConcurrency: audited writes from two servers (on
// different members), many at once, group-committed: the log is dense,
// every record lands once, and each writer's records keep its order.
func TestAuditDenseUnderConcurrency(t *testing.T) {
	ctx := t.Context()
	p := prefix(t)
	stores := []*etcdstore.Store{open(t, cluster.Client(t, 0), p, nil), open(t, cluster.Client(t, 2), p, nil)}
	const writers, each = 8, 20
	var wg sync.WaitGroup
	for w := range writers {
		s := stores[w%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				target := fmt.Sprintf("w%d", w)
				var err error
				if i%2 == 0 {
					err = s.AppendAudit(ctx, &store.AuditRecord{Action: "append", Target: target, Message: fmt.Sprint(i)})
				} else {
					// A write and its record, on a key of its own.
					_, err = s.UpdateGroup(ctx, fmt.Sprintf("g%d-%d", w, i), func(*store.Group) (*store.Group, *store.AuditRecord, error) {
						return &store.Group{Name: fmt.Sprintf("g%d-%d", w, i)}, &store.AuditRecord{Action: "group", Target: target, Message: fmt.Sprint(i)}, nil
					})
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	next := map[string]int{}
	var n uint64
	if err := stores[0].AuditLog(ctx, 0, func(r *store.AuditRecord) bool {
		n++
		if r.Seq != n {
			t.Fatalf("record %d has seq %d", n, r.Seq)
		}
		if want := fmt.Sprint(next[r.Target]); r.Message != want {
			t.Errorf("writer %s: record %s after %d of its records", r.Target, r.Message, next[r.Target])
		}
		next[r.Target]++
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if n != writers*each {
		t.Errorf("%d records, want %d", n, writers*each)
	}
	if st, err := stores[1].Stats(ctx); err != nil || st.AuditRecords != writers*each {
		t.Errorf("stats = %+v, %v", st, err)
	}
}

// TestSessionLeaseExpiry: etcd itself deletes a session when its lease
// ends; a completed marker shares it.
func TestSessionLeaseExpiry(t *testing.T) {
	ctx := t.Context()
	s := open(t, cluster.ClientAll(t), prefix(t), &etcdstore.Options{SessionLeaseBucket: time.Second, SessionLeaseGrace: time.Nanosecond})
	now := time.Now()
	for _, id := range []string{"live", "done"} {
		if err := s.CreateSession(ctx, session(id, "dev-"+id, now, time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.FinishEnrollment(ctx, "done", now, &store.IssuedCertificate{Serial: "c1", DeviceID: "dev-done"}, enroll("dev-done", "done")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Session(ctx, "live", now); err != nil {
		t.Fatalf("fresh session: %v", err)
	}
	if _, err := s.Session(ctx, "live", now.Add(time.Second)); !errors.Is(err, store.ErrSessionExpired) {
		t.Errorf("session at its ExpiresAt (still stored): %v, want ErrSessionExpired", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, errLive := s.Session(ctx, "live", now)
		_, errDone := s.CompletedSession(ctx, "done")
		if errors.Is(errLive, store.ErrNotFound) && errors.Is(errDone, store.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("15 s after a 1 s session: session %v, completed marker %v; want both gone", errLive, errDone)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := s.FinishEnrollment(ctx, "live", now, &store.IssuedCertificate{Serial: "c2", DeviceID: "dev-live"}, enroll("dev-live", "live")); !errors.Is(err, store.ErrSessionUsed) {
		t.Errorf("finish of a session etcd deleted: %v, want ErrSessionUsed", err)
	}
}

// TestWatchConfigsAcrossMembers: a config stored through one member
// reaches a watcher connected to another, in commit order.
func TestWatchConfigsAcrossMembers(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	p := prefix(t)
	watcher := open(t, cluster.Client(t, 0), p, nil)
	writer := open(t, cluster.Client(t, 2), p, nil)
	got := make(chan *store.ConfigVersion, 100)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- watcher.WatchConfigs(wctx, func(cv *store.ConfigVersion) { got <- cv }) }()
	put := func(scope string) uint64 {
		t.Helper()
		cv, err := writer.PutConfig(ctx, scope, 0, func(_ *store.ConfigVersion, next uint64) (*store.ConfigVersion, *store.AuditRecord, error) {
			return &store.ConfigVersion{Scope: scope, Version: next, Config: []byte(`{}`), CreatedAt: t0}, nil, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return cv.Version
	}
	// The watch starts asynchronously: put until one is seen.
	var last uint64
	for seen := false; !seen; {
		put("group/warmup")
		select {
		case cv := <-got:
			seen, last = true, cv.Version
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("watch saw nothing")
		}
	}
	drain := time.After(300 * time.Millisecond)
	for draining := true; draining; {
		select {
		case cv := <-got:
			last = cv.Version
		case <-drain:
			draining = false
		}
	}
	var want []uint64
	for _, scope := range []string{"group/a", "device/x", "group/a"} {
		want = append(want, put(scope))
	}
	for i, w := range want {
		select {
		case cv := <-got:
			if cv.Version != w || cv.Version <= last {
				t.Errorf("event %d: version %d, want %d", i, cv.Version, w)
			}
			last = cv.Version
		case <-ctx.Done():
			t.Fatalf("event %d of %d never came", i, len(want))
		}
	}
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("WatchConfigs returned %v, want context.Canceled", err)
	}
}

// TestMemberStopped kills one member of a cluster while writers run
// through clients of every member: every write that returned nil is
// readable afterwards, and the audit log stays dense.
func TestMemberStopped(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()
	p := prefix(t)
	opts := &etcdstore.Options{RequestTimeout: 3 * time.Second}
	const writers = 4
	var ok []string
	var mu sync.Mutex
	var failed atomic.Int32
	stopAt := time.Now().Add(400 * time.Millisecond)
	endAt := stopAt.Add(1500 * time.Millisecond)
	var wg sync.WaitGroup
	for w := range writers {
		s := open(t, c.ClientAll(t), p, opts)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(endAt) && ctx.Err() == nil; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				if err := s.CreateSession(ctx, session(id, "dev-"+id, t0, time.Minute)); err != nil {
					failed.Add(1)
					continue
				}
				if _, err := s.FinishEnrollment(ctx, id, t0, &store.IssuedCertificate{Serial: "c-" + id, DeviceID: "dev-" + id}, enroll("dev-"+id, id)); err != nil {
					failed.Add(1)
					continue
				}
				mu.Lock()
				ok = append(ok, id)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(time.Until(stopAt))
	c.Stop(0)
	wg.Wait()
	if len(ok) == 0 {
		t.Fatal("no write succeeded")
	}
	t.Logf("%d enrollments committed, %d calls failed around the stop", len(ok), failed.Load())
	r := open(t, c.Client(t, 1), p, nil)
	for _, id := range ok {
		if d, err := r.Device(ctx, "dev-"+id); err != nil || d.LastSessionID != id {
			t.Errorf("device of acknowledged enrollment %s: %+v, %v", id, d, err)
		}
		if _, err := r.Certificate(ctx, "c-"+id); err != nil {
			t.Errorf("certificate of acknowledged enrollment %s: %v", id, err)
		}
	}
	var n uint64
	if err := r.AuditLog(ctx, 0, func(rec *store.AuditRecord) bool {
		n++
		if rec.Seq != n {
			t.Fatalf("audit record %d has seq %d", n, rec.Seq)
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if n < uint64(len(ok)) {
		t.Errorf("%d audit records for %d acknowledged enrollments", n, len(ok))
	}
}

// TestRecoverCommittedJournal: a server that died after committing a bulk
// write, before applying it, left a committed journal: the next Open
// applies it; an uncommitted one is discarded.
func TestRecoverCommittedJournal(t *testing.T) {
	ctx := t.Context()
	cli := cluster.ClientAll(t)
	p := prefix(t)
	put := func(k, v string) {
		if _, err := cli.Put(ctx, p+k, v); err != nil {
			t.Fatal(err)
		}
	}
	put("journals/aaaa", "committed")
	put("journal/aaaa/00000000", fmt.Sprintf(`[{"k":%q,"v":"{\"device_id\":\"x\",\"serial\":\"SNX\"}"},{"k":%q,"v":"x"}]`, p+"prereg/x", p+"serials/SNX"))
	put("journals/bbbb", "staging")
	put("journal/bbbb/00000000", fmt.Sprintf(`[{"k":%q,"v":"{\"device_id\":\"y\"}"}]`, p+"prereg/y"))
	s := open(t, cli, p, nil)
	if r, err := s.Preregistration(ctx, "x"); err != nil || r.Serial != "SNX" {
		t.Errorf("committed journal not rolled forward: %+v, %v", r, err)
	}
	if _, err := s.Preregistration(ctx, "y"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("uncommitted journal applied: %v", err)
	}
	resp, err := cli.Get(ctx, p+"journal", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("%d journal keys left, %v", resp.Count, err)
	}
	if err := s.PutPreregistrations(ctx, []*store.Preregistration{{DeviceID: "z", Serial: "SNX"}}); !errors.Is(err, store.ErrExists) {
		t.Errorf("serial of the recovered row taken over: %v", err)
	}
}

func TestOpenURL(t *testing.T) {
	ep := strings.TrimPrefix(cluster.Endpoints()[0], "http://")
	tlsCfg := &tls.Config{}
	for _, tt := range []struct {
		url  string
		opts *etcdstore.Options
		want string
	}{
		{"http://" + ep + "/p", nil, "scheme is not etcd:// or etcds://"},
		{"etcd://", nil, "no endpoint"},
		{"etcd:///p", nil, "no endpoint"},
		{"etcd://localhost/p", nil, `endpoint "localhost": address localhost: missing port in address`},
		{"etcd://:2379/p", nil, `endpoint ":2379" has no host`},
		{"etcd://h:0/p", nil, `port "0" is not a number in 1..65535`},
		{"etcd://h:99999/p", nil, `port "99999" is not a number in 1..65535`},
		{"etcd://h:x/p", nil, `port "x" is not a number`},
		{"etcd://h:1,/p", nil, `endpoint ""`},
		{"etcd://h:1", nil, "no key prefix"},
		{"etcd://h:1/", nil, "no key prefix"},
		{"etcd://h:1/a//b", nil, "empty, . or .. segment"},
		{"etcd://h:1/a/../b", nil, "empty, . or .. segment"},
		{"etcd://u:pw@h:1/p", nil, "credentials in the URL"},
		{"etcd://h:1/p?x=1", nil, "query or fragment not allowed"},
		{"etcd://h:1/p#f", nil, "query or fragment not allowed"},
		{"etcd://" + ep + "/p", &etcdstore.Options{TLS: tlsCfg}, "Options.TLS set for a plaintext etcd:// URL"},
	} {
		t.Run(tt.url, func(t *testing.T) {
			s, err := etcdstore.Open(t.Context(), tt.url, tt.opts)
			if err == nil {
				s.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, etcdstore.ErrInvalidURL) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want ErrInvalidURL saying %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), "write etcd://host:port[,host:port…]/prefix") {
				t.Errorf("error %q does not say what to write", err)
			}
		})
	}
	t.Run("valid", func(t *testing.T) {
		var hosts []string
		for _, e := range cluster.Endpoints() {
			hosts = append(hosts, strings.TrimPrefix(e, "http://"))
		}
		s, err := etcdstore.Open(t.Context(), "etcd://"+strings.Join(hosts, ",")+"/"+strings.TrimSuffix(prefix(t), "/"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.AppendAudit(t.Context(), &store.AuditRecord{Action: "x"}); err != nil {
			t.Fatal(err)
		}
	})
}

// TestOpenClientPrefix: OpenClient refuses the keyspace's root and the
// prefixes Open's URL check refuses, before it writes anything.
func TestOpenClientPrefix(t *testing.T) {
	cli := cluster.Client(t, 0)
	for _, p := range []string{"", "/", "//", "a//b", "a/../b", "./a", "a/\x01"} {
		s, err := etcdstore.OpenClient(t.Context(), cli, p, nil)
		if err == nil {
			s.Close()
			t.Errorf("OpenClient(%q) opened", p)
			continue
		}
		if !errors.Is(err, etcdstore.ErrInvalidURL) || !strings.Contains(err.Error(), "prefix") {
			t.Errorf("OpenClient(%q): %v, want ErrInvalidURL naming the prefix", p, err)
		}
	}
}

// BenchmarkFinishEnrollment: a session created and finished per op, by
// 8 goroutines per GOMAXPROCS (a device
// each), on the shared 3-member cluster (fsyncing, in this process)
// through a client of every member.
func BenchmarkFinishEnrollment(b *testing.B) {
	s := open(b, cluster.ClientAll(b), prefix(b), nil)
	ctx := b.Context()
	var n atomic.Int64
	start := time.Now()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			id := fmt.Sprintf("s%d", i)
			dev := fmt.Sprintf("d%d", i)
			if err := s.CreateSession(ctx, session(id, dev, t0, time.Minute)); err != nil {
				b.Error(err)
				return
			}
			if _, err := s.FinishEnrollment(ctx, id, t0, &store.IssuedCertificate{Serial: "c" + id, DeviceID: dev}, enroll(dev, id)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(n.Load())/time.Since(start).Seconds(), "enrollments/s")
}

// TestConfigHistoryPages: a scope's history, newest first, across pages
// of 3, with version numbers shared with other scopes, dense stretches and
// wide gaps (PutConfig's floor), complete and in order; stopping early
// stops.
func TestConfigHistoryPages(t *testing.T) {
	s := open(t, cluster.Client(t, 0), prefix(t), nil)
	etcdstore.SetListPage(s, 3)
	ctx := t.Context()
	var want []uint64
	put := func(scope string, floor uint64) {
		t.Helper()
		cv, err := s.PutConfig(ctx, scope, floor, func(_ *store.ConfigVersion, next uint64) (*store.ConfigVersion, *store.AuditRecord, error) {
			return &store.ConfigVersion{Scope: scope, Version: next, Config: []byte(`{}`)}, nil, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if scope == "group/a" {
			want = append([]uint64{cv.Version}, want...)
		}
	}
	for i := range 14 { // dense, interleaved with group/b
		put("group/a", 0)
		if i%3 == 0 {
			put("group/b", 0)
		}
	}
	put("group/b", 1000)   // a gap in group/a's numbers
	put("group/a", 0)      // 1002
	put("group/a", 50_000) // another gap
	for range 9 {
		put("group/b", 0)
		put("group/a", 0)
	}
	put("group/a", 1<<40) // a very wide one
	put("group/a", 0)
	put("group/a", math.MaxUint64-100) // growing the window must not wrap around
	put("group/a", 0)
	var got []uint64
	if err := s.ConfigHistory(ctx, "group/a", func(cv *store.ConfigVersion) bool {
		got = append(got, cv.Version)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("history\n got %v\nwant %v", got, want)
	}
	got = nil
	s.ConfigHistory(ctx, "group/a", func(cv *store.ConfigVersion) bool {
		got = append(got, cv.Version)
		return len(got) < 5
	})
	if !slices.Equal(got, want[:5]) {
		t.Errorf("stopped after 5: got %v, want %v", got, want[:5])
	}
	if err := s.ConfigHistory(ctx, "group/none", func(*store.ConfigVersion) bool { t.Error("called"); return true }); err != nil {
		t.Errorf("unknown scope: %v", err)
	}
	// Every window holds page..2×page versions, or all that remain: a
	// page never reads the whole history, and never makes a read for one.
	const page = 3
	for i, hi := range want {
		lo, err := etcdstore.ConfigWindow(s, ctx, "group/a", hi, page)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, v := range want[i:] {
			if v >= lo {
				n++
			}
		}
		if remaining := len(want) - i; n < min(page, remaining) || n > 2*page {
			t.Errorf("window below %d: from %d, %d versions; want %d..%d", hi, lo, n, min(page, remaining), 2*page)
		}
	}
}

// BenchmarkMergePreregistrations: a factory batch of 2,000 new devices
// (with serials and a group) merged in one call, read row by row as the
// server's plan does, with and without the reader's Prefetch.
func BenchmarkMergePreregistrations(b *testing.B) {
	for _, prefetch := range []bool{true, false} {
		b.Run(fmt.Sprintf("prefetch=%v", prefetch), func(b *testing.B) {
			s := open(b, cluster.ClientAll(b), prefix(b), nil)
			const rows = 2000
			batch := 0
			for b.Loop() {
				batch++
				staged := make([]*store.StagedRow, rows)
				for i := range staged {
					id := fmt.Sprintf("b%d-dev%05d", batch, i)
					staged[i] = &store.StagedRow{Line: i + 1, DeviceID: id, Serial: "SN-" + id, Group: "line-a"}
				}
				err := s.MergePreregistrations(b.Context(), func(r store.PreregReader) (*store.PreregPlan, error) {
					if prefetch {
						if err := r.Prefetch(staged); err != nil {
							return nil, err
						}
					}
					plan := &store.PreregPlan{}
					for _, row := range staged {
						prev, err := r.Preregistration(row.DeviceID)
						if err != nil {
							return nil, err
						}
						owner, err := r.SerialOwner(row.Serial)
						if err != nil {
							return nil, err
						}
						if prev != nil || owner != "" {
							return nil, fmt.Errorf("row %d: not new", row.Line)
						}
						plan.Put = append(plan.Put, &store.Preregistration{DeviceID: row.DeviceID, Serial: row.Serial, Group: row.Group})
					}
					return plan, nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// TestWatchRevocationsAcrossMembers: a revocation recorded through one
// member reaches a watcher on another, so every server re-signs its CRL.
func TestWatchRevocationsAcrossMembers(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	p := prefix(t)
	watcher := open(t, cluster.Client(t, 0), p, nil)
	writer := open(t, cluster.Client(t, 2), p, nil)
	got := make(chan *store.Revocation, 100)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- watcher.WatchRevocations(wctx, func(r *store.Revocation) { got <- r }) }()
	// The watch starts asynchronously: enroll and revoke devices until
	// one revocation is seen, then one more whose serial must follow.
	revoke := func(i int) string {
		t.Helper()
		dev, sess, serial := fmt.Sprintf("dev%d", i), fmt.Sprintf("s%d", i), fmt.Sprintf("c%d", i)
		if err := writer.CreateSession(ctx, session(sess, dev, t0, time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := writer.FinishEnrollment(ctx, sess, t0, &store.IssuedCertificate{Serial: serial, DeviceID: dev, SessionID: sess, NotAfter: t0.Add(time.Hour)}, enroll(dev, sess)); err != nil {
			t.Fatal(err)
		}
		err := writer.UpdateDevices(ctx, []string{dev}, func(id string, prev *store.Device) (*store.DeviceChange, error) {
			next := *prev
			next.Status = store.StatusRevoked
			return &store.DeviceChange{Device: &next, Revoke: &store.Revocation{RevokedAt: t0, Reason: "test"}}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return serial
	}
	i := 0
	for seen := false; !seen; i++ {
		revoke(i)
		select {
		case <-got:
			seen = true
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("watch saw nothing")
		}
	}
	for len(got) > 0 {
		<-got
	}
	time.Sleep(100 * time.Millisecond)
	for len(got) > 0 {
		<-got
	}
	want := revoke(i)
	select {
	case r := <-got:
		if r.Serial != want || r.DeviceID != fmt.Sprintf("dev%d", i) {
			t.Errorf("watched revocation %+v, want serial %s", r, want)
		}
	case <-ctx.Done():
		t.Fatal("the revocation never came")
	}
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("WatchRevocations returned %v, want context.Canceled", err)
	}
}

// TestLead: one of two servers, on different members, holds a role; the
// other takes it over when the first resigns, and not before.
func TestLead(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	p := prefix(t)
	a := open(t, cluster.Client(t, 0), p, nil)
	b := open(t, cluster.Client(t, 1), p, nil)
	heldA, resignA, err := a.Lead(ctx, "broker", "a")
	if err != nil {
		t.Fatal(err)
	}
	type lead struct {
		held   context.Context
		resign func()
		err    error
	}
	bc := make(chan lead, 1)
	go func() {
		h, r, err := b.Lead(ctx, "broker", "b")
		bc <- lead{h, r, err}
	}()
	select {
	case l := <-bc:
		t.Fatalf("b led while a held the role (err %v)", l.err)
	case <-time.After(500 * time.Millisecond):
	}
	if heldA.Err() != nil {
		t.Fatal("a lost the role without resigning")
	}
	resignA()
	if heldA.Err() == nil {
		t.Error("a's held context lives on after resigning")
	}
	select {
	case l := <-bc:
		if l.err != nil {
			t.Fatal(l.err)
		}
		if l.held.Err() != nil {
			t.Error("b's role ended at once")
		}
		l.resign()
	case <-ctx.Done():
		t.Fatal("b never took the role over")
	}
	if _, _, err := a.Lead(ctx, "bad/role", "a"); err == nil {
		t.Error("a role with / was accepted")
	}
}
