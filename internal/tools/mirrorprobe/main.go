// Command mirrorprobe is what provisioners runs on a cluster's network
// before nodes are created: it asks each mirror for GET /v2/, as a node's
// containerd would, and prints one line per mirror ("ok NAME URL STATUS" or
// "fail NAME URL ERROR"). It exits 1 when any mirror does not answer.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	client := &http.Client{Timeout: 3 * time.Second}
	failed := false
	for _, arg := range os.Args[1:] {
		name, url, ok := strings.Cut(arg, "=")
		if !ok {
			fmt.Printf("fail %s - want NAME=URL\n", arg)
			failed = true
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(url, "/")+"/v2/", nil)
		if err == nil {
			var resp *http.Response
			if resp, err = client.Do(req); err == nil {
				resp.Body.Close()
				// A registry answers /v2/ with 200, or 401 when it wants
				// a token: either way it is there.
				if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
					err = fmt.Errorf("GET /v2/ answered %s", resp.Status)
				} else {
					fmt.Printf("ok %s %s %d\n", name, url, resp.StatusCode)
				}
			}
		}
		cancel()
		if err != nil {
			fmt.Printf("fail %s %s %v\n", name, url, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
