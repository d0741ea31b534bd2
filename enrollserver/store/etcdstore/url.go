package etcdstore

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// storeURL is a parsed etcd:// or etcds:// store URL.
type storeURL struct {
	endpoints []string // host:port
	tls       bool
	prefix    string // key prefix, ending in "/"
}

// urlHint is the shape every URL error shows.
const urlHint = "write etcd://host:port[,host:port…]/prefix (etcds:// for TLS)"

// parseURL parses etcd://host1:2379,host2:2379/prefix. It reports the
// first problem it finds; credentials are refused in the URL (they would
// end up in logs and process listings): pass them in Options.
func parseURL(raw string) (*storeURL, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("etcd store URL %q: %s: %s: %w", raw, fmt.Sprintf(format, args...), urlHint, ErrInvalidURL)
	}
	var u storeURL
	rest, ok := strings.CutPrefix(raw, "etcd://")
	if !ok {
		if rest, ok = strings.CutPrefix(raw, "etcds://"); !ok {
			return nil, bad("scheme is not etcd:// or etcds://")
		}
		u.tls = true
	}
	if strings.ContainsAny(rest, "?#") {
		return nil, bad("query or fragment not allowed")
	}
	hosts, path, _ := strings.Cut(rest, "/")
	if strings.Contains(hosts, "@") {
		return nil, bad("credentials in the URL: pass them in Options.Username/Password")
	}
	if hosts == "" {
		return nil, bad("no endpoint")
	}
	for _, h := range strings.Split(hosts, ",") {
		host, port, err := net.SplitHostPort(h)
		if err != nil {
			return nil, bad("endpoint %q: %v", h, err)
		}
		if host == "" {
			return nil, bad("endpoint %q has no host", h)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, bad("endpoint %q: port %q is not a number in 1..65535", h, port)
		}
		u.endpoints = append(u.endpoints, h)
	}
	path = strings.Trim(path, "/")
	if err := checkPrefix(path); err != nil {
		return nil, bad("%v", err)
	}
	u.prefix = path + "/"
	return &u, nil
}

// checkPrefix refuses a key prefix that is the root of the keyspace or
// has an empty, . or .. segment or a control character; slashes around it
// do not count as segments.
func checkPrefix(prefix string) error {
	path := strings.Trim(prefix, "/")
	if path == "" {
		return errors.New("no key prefix (the store never writes at the root of the keyspace)")
	}
	for _, seg := range strings.Split(path, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("key prefix %q has an empty, . or .. segment", prefix)
		}
	}
	if strings.ContainsFunc(path, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("key prefix %q holds a control character", prefix)
	}
	return nil
}
