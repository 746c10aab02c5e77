// Command hello is the image internal/dockerenv's tests build and run. It
// prints what the tests check: a greeting, an environment variable set in
// the image, its effective capabilities and its IPv4 addresses.
package main

import (
	"fmt"
	"net"
	"os"
	"strings"
)

func main() {
	fmt.Println("hello from pullthrough")
	fmt.Printf("greeting-env=%s\n", os.Getenv("HELLO_GREETING"))
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		for line := range strings.SplitSeq(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
				fmt.Printf("capeff=%s\n", strings.TrimSpace(v))
			}
		}
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
			fmt.Printf("addr=%s\n", ipn.IP)
		}
	}
	fmt.Fprintln(os.Stderr, "bye on stderr")
}
