package engine

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"
)

// AccessPolicy decides which client addresses a cache answers. The zero value
// admits this host itself (loopback and its own addresses: Docker's NAT can
// make a local client appear under eth0's) and the subnets of the bridges
// where Talos nodes pull from: docker0, the networks Docker creates (br-<id>,
// which is what Talos's docker provisioner makes) and the bridges of Talos's
// qemu provisioner (talos<hash>). Other bridges are not admitted: on a host
// whose LAN uplink is a bridge (br0), that would be the whole LAN.
type AccessPolicy struct {
	// Open admits every client.
	Open bool
	// Allow admits these networks in addition.
	Allow []netip.Prefix

	// bridges lists the host's own addresses (as /32 or /128) and its
	// bridge subnets; tests replace it.
	bridges func() []netip.Prefix

	mu        sync.Mutex
	known     []netip.Prefix
	refreshed time.Time
}

// Allowed reports whether a client at remoteAddr ("ip:port") may use the cache.
func (a *AccessPolicy) Allowed(remoteAddr string) bool {
	if a == nil || a.Open {
		return true
	}
	ap, err := netip.ParseAddrPort(remoteAddr)
	var ip netip.Addr
	if err == nil {
		ip = ap.Addr()
	} else if ip, err = netip.ParseAddr(remoteAddr); err != nil {
		return false
	}
	ip = ip.Unmap()
	if ip.IsLoopback() {
		return true
	}
	for _, p := range a.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if contains(a.known, ip) {
		return true
	}
	// Docker networks appear after the cache starts: look again, but at most
	// once a second, so a refused client cannot make every request walk the
	// interface list.
	if time.Since(a.refreshed) < time.Second && a.refreshed != (time.Time{}) {
		return false
	}
	list := bridgeSubnets
	if a.bridges != nil {
		list = a.bridges
	}
	a.known = list()
	a.refreshed = time.Now()
	return contains(a.known, ip)
}

func contains(ps []netip.Prefix, ip netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// nodeBridgeRE names the bridges nodes live behind: docker0, Docker's
// networks (br- and the network ID's first 12 hex digits) and Talos's qemu
// bridges ("talos" and 8 hex digits of the network name's hash).
var nodeBridgeRE = regexp.MustCompile(`^(docker0|br-[0-9a-f]{12}|talos[0-9a-f]{8})$`)

// bridgeSubnets lists the host's own addresses and the subnets of the
// bridges nodes live behind.
func bridgeSubnets() []netip.Prefix {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, ifc := range ifaces {
		_, err := os.Stat(filepath.Join("/sys/class/net", ifc.Name, "bridge"))
		bridge := err == nil && nodeBridgeRE.MatchString(ifc.Name)
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
			if bridge {
				ones, _ := n.Mask.Size()
				out = append(out, netip.PrefixFrom(ip, ones).Masked())
			}
		}
	}
	return out
}
