package standin

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// SummaryPrefix starts the one line that carries the summary, so a reader of
// the node's log finds it among the progress lines.
const SummaryPrefix = "PULLTHROUGH-STANDIN-SUMMARY "

// ErrorPrefix starts the line a node writes before it exits non-zero on a
// config it cannot use; the rest of the line is the error.
const ErrorPrefix = "PULLTHROUGH-STANDIN-ERROR "

// Summary is what one boot pulled. Its JSON form is the contract with
// package fixtures (StandinSummary), which a test there checks field by field.
type Summary struct {
	TalosVersion string  `json:"talosVersion"`
	Hostname     string  `json:"hostname,omitempty"`
	MachineType  string  `json:"machineType,omitempty"`
	Wanted       int     `json:"wanted"`   // images images.List named
	Images       int     `json:"images"`   // images pulled completely
	Requests     int64   `json:"requests"` // HTTP requests sent, failed ones included
	Bytes        int64   `json:"bytes"`    // response body bytes received: manifests and blobs
	Seconds      float64 `json:"seconds"`  // wall time of all pulls

	Registries map[string]RegistrySummary `json:"registries"`
	Pulls      []Pull                     `json:"pulls"`
	Failures   []Failure                  `json:"failures"`
	// Fallbacks are the steps the registry itself served after every
	// mirror endpoint failed them, as containerd falls back unless the
	// mirror config says skipFallback.
	Fallbacks []Fallback `json:"fallbacks"`
}

// Fallback is one step of a pull (resolving the tag, a manifest, a blob)
// that the registry itself served because the mirror endpoints failed it.
type Fallback struct {
	Ref      string          `json:"ref"`
	Registry string          `json:"registry"`
	Step     string          `json:"step"`     // "resolve v1.36.0", "manifest sha256:…", "blob sha256:…"
	Endpoint string          `json:"endpoint"` // the registry's own URL that served it
	Failed   []EndpointError `json:"failed"`   // the mirror endpoints that failed it, in order
}

// EndpointError is why one host failed a step.
type EndpointError struct {
	Endpoint string `json:"endpoint"`
	Error    string `json:"error"`
}

// RegistrySummary adds up one registry host's pulls.
type RegistrySummary struct {
	Images   int      `json:"images"`
	Failed   int      `json:"failed"`
	Requests int64    `json:"requests"`
	Bytes    int64    `json:"bytes"`
	Mirrors  []string `json:"mirrors,omitempty"` // endpoints the config names, in order
}

// Pull is one image pulled completely. Requests and Bytes are the image's
// totals, attempts at endpoints that failed before it included.
type Pull struct {
	Ref      string  `json:"ref"`
	Digest   string  `json:"digest"`   // of what the tag names: a manifest or an index
	Endpoint string  `json:"endpoint"` // the endpoint that served it
	Blobs    int     `json:"blobs"`    // config and layers
	Requests int64   `json:"requests"`
	Bytes    int64   `json:"bytes"`
	Seconds  float64 `json:"seconds"`
}

// Failure is one image that was not pulled.
type Failure struct {
	Ref       string   `json:"ref"`
	Registry  string   `json:"registry"`
	Endpoints []string `json:"endpoints"` // tried, in order; https://<registry> when it had no mirror
	Error     string   `json:"error"`
}

// WriteSummary writes s as one line: SummaryPrefix and JSON.
func WriteSummary(w io.Writer, s Summary) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encoding summary: %w", err)
	}
	if _, err := fmt.Fprintf(w, "%s%s\n", SummaryPrefix, b); err != nil {
		return fmt.Errorf("writing summary: %w", err)
	}
	return nil
}

// FindLine returns the rest of the last line of logs that starts with
// prefix. The last one wins, so a node restarted in the same container
// reports its latest boot.
func FindLine(logs, prefix string) (string, bool) {
	var last string
	found := false
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimRight(sc.Text(), "\r"), prefix); ok {
			last, found = rest, true
		}
	}
	return last, found
}
