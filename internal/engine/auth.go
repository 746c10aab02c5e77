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
	resp, err := u.tokenExchange(ctx, realm, params["service"], scope, last)
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
		Token        string `json:"token"`
		AccessToken  string `json:"access_token"`
		ExpiresIn    int    `json:"expires_in"`
		RefreshToken string `json:"refresh_token"`
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
	if last && tok.RefreshToken != "" && u.refresh != "" {
		// The server rotated the refresh token: the old one may be spent.
		u.secrets.add(tok.RefreshToken)
		u.refresh = tok.RefreshToken
	}
	u.mu.Unlock()
	return nil
}

// tokenExchange asks the realm for a token for scope. With an identity
// token (Docker's identitytoken, an OAuth2 refresh token: what `docker
// login` keeps for some registries and credential helpers return for
// several clouds) it is the OAuth2 refresh grant, a form POST; a realm that
// does not take POST (404, 405) is asked again the classic way. Otherwise a
// GET with service and scope, with the basic credentials if there are any.
// A fleet tier (last false) never gets credentials.
func (u *upstream) tokenExchange(ctx context.Context, realm *url.URL, service, scope string, last bool) (*http.Response, error) {
	u.mu.Lock()
	refresh := u.refresh
	u.mu.Unlock()
	if last && refresh != "" {
		form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}, "client_id": {"pullthrough"}, "scope": {scope}}
		if service != "" {
			form.Set("service", service)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, realm.String(), strings.NewReader(form.Encode()))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := u.client.Do(req)
		if err != nil || (resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed) {
			return resp, err
		}
		drain(resp.Body)
	}
	q := realm.Query()
	if service != "" {
		q.Set("service", service)
	}
	q.Set("scope", scope)
	get := *realm
	get.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, get.String(), nil)
	if err != nil {
		return nil, err
	}
	if last && u.creds.hasBasic() {
		req.SetBasicAuth(u.creds.user, u.creds.password)
	}
	return u.client.Do(req)
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
