package cache

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
)

// Mirrors maps each cached registry host to its cache's URL at addr, the
// address nodes use to reach this host: "docker.io" → "http://172.17.0.1:5000".
func (s *Set) Mirrors(addr string) (map[string]string, error) {
	ip, err := s.mirrorAddr(addr)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(s.caches))
	for _, c := range s.caches {
		m[c.up.Host] = "http://" + net.JoinHostPort(ip, strconv.Itoa(c.port))
	}
	return m, nil
}

// MirrorFlags returns the mirrors as talosctl's --registry-mirror values,
// "docker.io=http://172.17.0.1:5000", in the set's upstream order.
func (s *Set) MirrorFlags(addr string) ([]string, error) {
	m, err := s.Mirrors(addr)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(s.caches))
	for _, c := range s.caches {
		out = append(out, c.up.Host+"="+m[c.up.Host])
	}
	return out, nil
}

func (s *Set) mirrorAddr(addr string) (string, error) {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return "", fmt.Errorf("mirror address %q: want an IP address such as 172.17.0.1", addr)
	}
	if s.listenAll || slices.Contains(s.addrs, ip.String()) {
		return ip.String(), nil
	}
	return "", fmt.Errorf("mirror address %s: the caches listen on %v only; add it with WithListenAddrs or use WithListenAll", ip, s.addrs)
}

// WildcardMirror is one endpoint for every registry of the set at addr, for
// Talos's "*" mirror (containerd's _default host, which adds ?ns=<registry>
// to every request): the first cache's port, which routes each request to
// its registry's cache. "http://172.17.0.1:5000".
func (s *Set) WildcardMirror(addr string) (string, error) {
	ip, err := s.mirrorAddr(addr)
	if err != nil {
		return "", err
	}
	if len(s.caches) == 0 {
		return "", fmt.Errorf("no caches")
	}
	return "http://" + net.JoinHostPort(ip, strconv.Itoa(s.caches[0].port)), nil
}
