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

// InNetworkAddr is the address a cache container takes on a cluster's
// network: the IPv4 CIDR's last address before the broadcast, far from the
// nodes, which Talos numbers from the gateway up (10.5.0.254 for
// 10.5.0.0/24).
func InNetworkAddr(cidr string) (netip.Addr, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is4() || p.Bits() > 28 {
		return netip.Addr{}, fmt.Errorf("cluster CIDR %q: want an IPv4 network of /28 or more, for nodes and a cache container", cidr)
	}
	b := p.Masked().Addr().As4()
	host := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	host |= 1<<(32-p.Bits()) - 1
	host--
	return netip.AddrFrom4([4]byte{byte(host >> 24), byte(host >> 16), byte(host >> 8), byte(host)}), nil
}

// HostIP returns this host's primary IPv4 address: the source address of its
// default route (eth0's on most machines). Containers of a rootless Docker
// daemon reach the host there and nowhere else: docker0's address inside
// their namespace is the rootless daemon's own bridge, and slirp4netns keeps
// the host's loopback out of reach. Finding it sends nothing: a UDP socket
// is connected, never written to.
func HostIP() (string, error) {
	c, err := net.Dial("udp4", "198.51.100.1:9") // TEST-NET-2: only the route is looked up
	if err != nil {
		return "", fmt.Errorf("finding this host's primary address (its default route): %w", err)
	}
	defer c.Close()
	ip := c.LocalAddr().(*net.UDPAddr).IP
	if ip == nil || ip.IsLoopback() || ip.IsUnspecified() {
		return "", fmt.Errorf("finding this host's primary address: the default route leaves from %v, not an address other machines or namespaces can reach", ip)
	}
	return ip.String(), nil
}
