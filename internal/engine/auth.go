package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

type bearer struct {
	token   string
	expires time.Time
}

// challengeFor returns the endpoint's bearer challenge, pinging /v2/ once to
// learn it, as registry clients do. An endpoint that cannot be reached is
// that error, at once: the request would only wait for it again.
func (u *upstream) challengeFor(ctx context.Context, ep *endpoint, last bool) (map[string]string, error) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.pinged {
		return ep.challenge, nil
	}
	ping := *ep.remote
	ping.Path = "/v2/"
	pctx, cancel := context.WithTimeout(ctx, u.header)
	defer cancel()
	if !last && u.tier > 0 {
		pctx, cancel = context.WithTimeout(pctx, u.tier)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(pctx, http.MethodGet, ping.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "pullthrough")
	ep.requests.Add(1)
	resp, err := u.client.Do(req)
	if err != nil {
		return nil, u.transportError(ctx, ep, err)
	}
	resp.Body = &endpointBody{ReadCloser: resp.Body, ep: ep, cancel: func() {}}
	drain(resp.Body)
	ep.pinged = true
	if resp.StatusCode == http.StatusUnauthorized {
		if scheme, params := parseChallenge(resp.Header.Get("Www-Authenticate")); scheme == "bearer" && params["realm"] != "" {
			ep.challenge = params
		}
	}
	return ep.challenge, nil
}

func (u *upstream) hasToken(ep *endpoint, scope string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	b, ok := u.tokens[ep.label+" "+scope]
	return ok && (b.token == "" || time.Now().Before(b.expires))
}

func (u *upstream) authorize(req *http.Request, ep *endpoint, last bool, scope string) {
	u.mu.Lock()
	b, ok := u.tokens[ep.label+" "+scope]
	u.mu.Unlock()
	switch {
	case ok && b.token != "" && time.Now().Before(b.expires):
		req.Header.Set("Authorization", "Bearer "+b.token)
	case ok && b.token == "" && last && u.creds.hasBasic():
		req.SetBasicAuth(u.creds.user, u.creds.password)
	case last && u.creds.registryToken != "":
		req.Header.Set("Authorization", "Bearer "+u.creds.registryToken)
	}
}

// fetchToken is the token dance of the distribution spec: GET the realm
// with service and scope, with the credentials if there are any.
func (u *upstream) fetchToken(ctx context.Context, ep *endpoint, last bool, params map[string]string, scope string) error {
	realm, err := url.Parse(params["realm"])
	if err != nil || (realm.Scheme != "https" && realm.Scheme != "http") {
		return &upstreamError{host: u.host, status: http.StatusBadGateway, code: "UNAVAILABLE",
			msg: fmt.Sprintf("upstream %s sent a token realm that is not an http(s) URL", u.host)}
	}
	q := realm.Query()
	if s := params["service"]; s != "" {
		q.Set("service", s)
	}
	q.Set("scope", scope)
	realm.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
	if err != nil {
		return err
	}
	if last && u.creds.hasBasic() {
		req.SetBasicAuth(u.creds.user, u.creds.password)
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return u.transportError(ctx, ep, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	drain(resp.Body)
	if resp.StatusCode != http.StatusOK {
		status := resp.StatusCode
		if status != http.StatusUnauthorized && status != http.StatusForbidden {
			status = http.StatusBadGateway
		}
		return &upstreamError{host: u.host, status: status, code: codeFor(status),
			msg: fmt.Sprintf("upstream %s refused a token for %s: %s", u.host, scope, u.secrets.redact(summarize(resp.Status, body)))}
	}
	var tok struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &tok); err != nil || (tok.Token == "" && tok.AccessToken == "") {
		return &upstreamError{host: u.host, status: http.StatusBadGateway, code: "UNAVAILABLE",
			msg: fmt.Sprintf("upstream %s answered its token request without a token", u.host)}
	}
	t := tok.Token
	if t == "" {
		t = tok.AccessToken
	}
	ttl := time.Duration(tok.ExpiresIn) * time.Second
	if ttl < time.Minute {
		ttl = time.Minute // the spec's floor
	}
	u.secrets.add(t)
	u.mu.Lock()
	u.tokens[ep.label+" "+scope] = bearer{token: t, expires: time.Now().Add(ttl - 10*time.Second)}
	u.mu.Unlock()
	return nil
}

// parseChallenge reads a WWW-Authenticate header: a scheme and its
// comma-separated key="value" parameters.
func parseChallenge(h string) (scheme string, params map[string]string) {
	params = map[string]string{}
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	scheme = strings.ToLower(scheme)
	for rest != "" {
		var kv string
		rest = strings.TrimSpace(rest)
		if i := indexUnquoted(rest, ','); i >= 0 {
			kv, rest = rest[:i], rest[i+1:]
		} else {
			kv, rest = rest, ""
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		params[strings.ToLower(strings.TrimSpace(k))] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	return scheme, params
}

func indexUnquoted(s string, c byte) int {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '"':
			quoted = !quoted
		case s[i] == c && !quoted:
			return i
		}
	}
	return -1
}
