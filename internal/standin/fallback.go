package standin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// host is one place a pull can go, in containerd's order: the mirror's
// endpoints, then the registry itself unless the mirror says skipFallback.
type host struct {
	url      string // as the config names it, or the registry's own URL
	registry bool   // the registry itself, not a mirror
	f        *fetcher
}

// hosts runs each step of one image's pull against its hosts the way
// containerd's resolver and fetcher do: in order, any error (transport,
// 401, 403, 404, 429, 5xx) moves on to the next host; 429 is retried on
// the same host up to five times; 500, 503 and 504 once, on the last host
// only. A step the registry itself served after its mirrors failed is a
// Fallback.
type hosts struct {
	img        Image
	list       []host
	arch       string
	t          *tally
	retryDelay time.Duration
	fallbacks  []Fallback
}

// hostError is one host's failure at one step.
type hostError struct {
	url string
	err error
}

func (h *hosts) each(ctx context.Context, what string, op func(*fetcher) error) (string, error) {
	var failed []hostError
	for i, hh := range h.list {
		last := i == len(h.list)-1
		for attempt := 0; ; attempt++ {
			err := op(hh.f)
			if err == nil {
				if hh.registry && len(failed) > 0 {
					fb := Fallback{Ref: h.img.Ref, Registry: h.img.Registry, Step: what, Endpoint: hh.url}
					for _, f := range failed {
						fb.Failed = append(fb.Failed, EndpointError{Endpoint: f.url, Error: f.err.Error()})
					}
					h.fallbacks = append(h.fallbacks, fb)
				}
				return hh.url, nil
			}
			if ctx.Err() != nil {
				return "", err
			}
			var se *statusError
			status := 0
			if errors.As(err, &se) {
				status = se.code
			}
			retry := (status == http.StatusTooManyRequests && attempt < 5) ||
				(last && attempt == 0 && (status == 500 || status == 503 || status == 504))
			if !retry {
				failed = append(failed, hostError{hh.url, err})
				break
			}
			t := time.NewTimer(h.retryDelay * time.Duration(attempt+1))
			select {
			case <-ctx.Done():
				t.Stop()
				return "", err
			case <-t.C:
			}
		}
	}
	msgs := make([]string, 0, len(failed))
	for _, f := range failed {
		kind := "mirror endpoint"
		if f.url == h.list[len(h.list)-1].url && h.list[len(h.list)-1].registry {
			kind = "registry itself"
		}
		msgs = append(msgs, fmt.Sprintf("%s %s: %v", kind, f.url, f.err))
	}
	return "", fmt.Errorf("%s of %s: every host failed: %s", what, h.img.Ref, strings.Join(msgs, "; "))
}

// registryURL is where a real node's containerd reaches the registry
// itself, unless fallback (tests: the fixtures upstream standing in for
// it) names another place.
func registryURL(registry string, fallback map[string]string) string {
	if u, ok := fallback[registry]; ok {
		return strings.TrimSuffix(u, "/")
	}
	if registry == "docker.io" {
		return "https://registry-1.docker.io" // where containerd sends Docker Hub pulls
	}
	return "https://" + registry
}

// fetchToken does the anonymous token dance of the distribution spec for
// the challenge of a 401.
func (f *fetcher) fetchToken(ctx context.Context, challenge string) error {
	scheme, params := parseChallenge(challenge)
	if scheme != "bearer" || params["realm"] == "" {
		return fmt.Errorf("the registry asks for %q authentication; the stand-in pulls anonymously", challenge)
	}
	realm, err := url.Parse(params["realm"])
	if err != nil || (realm.Scheme != "http" && realm.Scheme != "https") {
		return fmt.Errorf("token realm %q is not an http(s) URL", params["realm"])
	}
	q := realm.Query()
	if s := params["service"]; s != "" {
		q.Set("service", s)
	}
	if s := params["scope"]; s != "" {
		q.Set("scope", s)
	}
	realm.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", userAgentName)
	f.t.add(1, 0)
	resp, err := f.client.Do(req)
	if err != nil {
		return fmt.Errorf("fetching a token: %w", err)
	}
	defer resp.Body.Close()
	body, err := readLimited(resp.Body, 1<<20)
	f.t.add(0, int64(len(body)))
	if err != nil {
		return fmt.Errorf("fetching a token from %s: %w", realm.Host, err)
	}
	if resp.StatusCode != http.StatusOK {
		return &statusError{code: resp.StatusCode, msg: fmt.Sprintf("fetching a token from %s: %s", realm.Host, resp.Status)}
	}
	var tok struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &tok); err != nil || (tok.Token == "" && tok.AccessToken == "") {
		return fmt.Errorf("the token endpoint %s answered without a token", realm.Host)
	}
	f.token = tok.Token
	if f.token == "" {
		f.token = tok.AccessToken
	}
	return nil
}

// parseChallenge reads a WWW-Authenticate header: a scheme and its
// comma-separated key="value" parameters.
func parseChallenge(h string) (string, map[string]string) {
	params := map[string]string{}
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	for rest != "" {
		var kv string
		quoted, i := false, 0
		for ; i < len(rest); i++ {
			if rest[i] == '"' {
				quoted = !quoted
			} else if rest[i] == ',' && !quoted {
				break
			}
		}
		kv, rest = rest[:i], strings.TrimPrefix(rest[i:], ",")
		if k, v, ok := strings.Cut(kv, "="); ok {
			params[strings.ToLower(strings.TrimSpace(k))] = strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return strings.ToLower(scheme), params
}

// stripAuthOnHostChange is containerd's redirect rule: credentials are for
// the registry, never for the storage it redirects blobs to.
func stripAuthOnHostChange(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if req.URL.Host != via[0].URL.Host {
		req.Header.Del("Authorization")
	}
	return nil
}

// drainCount reads a small body to its end, so its bytes count, and closes it.
func drainCount(body io.ReadCloser) int64 {
	n, _ := io.Copy(io.Discard, io.LimitReader(body, 1<<20))
	body.Close()
	return n
}
