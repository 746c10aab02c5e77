// Command talos-standin-init is /init of the stand-in Talos VM's initramfs
// (see package internal/standinvm): it boots, pulls what a Talos node pulls
// through the mirrors of the config the launcher serves, prints the summary
// on the serial console and then waits for the VM to be stopped. It never
// exits: when PID 1 exits the kernel panics.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/pullthrough/pullthrough/internal/standin"
	"github.com/pullthrough/pullthrough/internal/standinvm"
)

func main() {
	console := os.Stdout // the kernel opened /dev/console (ttyS0) for us
	if os.Getpid() == 1 {
		if err := standinvm.Setup(); err != nil {
			fmt.Fprintf(console, "standin-vm: setup: %v\n", err)
		}
	}
	if err := standinvm.Boot(context.Background(), console, standinvm.Options{}); err != nil {
		fmt.Fprintf(console, "%s%v\n", standin.ErrorPrefix, err)
	}
	if os.Getpid() != 1 {
		os.Exit(0)
	}
	select {} // until qemu is killed
}
