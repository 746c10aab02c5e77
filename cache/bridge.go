package cache

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// ErrNoBridge means the named bridge interface does not exist or has no
// IPv4 address.
var ErrNoBridge = errors.New("bridge not found")

// DockerBridgeIP returns docker0's address as the host sees it (usually
// 172.17.0.1): where containers of the docker provisioner reach host caches.
func DockerBridgeIP() (string, error) { return InterfaceIP("docker0") }

// InterfaceIP returns the first IPv4 address of a host interface.
func InterfaceIP(name string) (string, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return "", fmt.Errorf("reading address of bridge %q: %w (%v)", name, ErrNoBridge, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return "", fmt.Errorf("reading address of bridge %q: %w", name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.String(), nil
		}
	}
	return "", fmt.Errorf("reading address of bridge %q: %w: it has no IPv4 address", name, ErrNoBridge)
}

// GatewayIP returns the first host address of an IPv4 CIDR, which is what
// Talos's provisioners give their bridge: 10.5.0.1 for 10.5.0.0/24.
func GatewayIP(cidr string) (string, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is4() {
		return "", fmt.Errorf("cluster CIDR %q: want an IPv4 network such as 10.5.0.0/24", cidr)
	}
	if p.Bits() > 29 {
		return "", fmt.Errorf("cluster CIDR %q: want /29 or larger, to hold a gateway and nodes", cidr)
	}
	return p.Masked().Addr().Next().String(), nil
}
