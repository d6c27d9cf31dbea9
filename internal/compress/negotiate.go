package compress

import "strings"

// Negotiate picks the content coding for a response from the request's
// Accept-Encoding value (RFC 9110 section 12.5.3) and the server's codings
// in order of preference. It returns "" for identity (no coding).
//
// Each preferred coding gets the q-value the client gave it by name (gzip
// also answers to x-gzip), else the q-value of "*", else 0 (not
// acceptable). The highest q-value above 0 wins, ties going to the earlier
// preference. Identity wins only when the client lists it with a q-value
// higher than every acceptable coding; an absent header means identity,
// since a client that states no preference rarely expects a coding.
// Elements with a malformed q-value are ignored. Negotiate does not
// allocate for up to 8 preferences.
func Negotiate(acceptEncoding string, prefs []string) string {
	if acceptEncoding == "" || len(prefs) == 0 {
		return ""
	}
	var stack [8]int
	qs := stack[:0]
	if len(prefs) > len(stack) {
		qs = make([]int, 0, len(prefs))
	}
	for range prefs {
		qs = append(qs, -1) // not named
	}
	star, ident := -1, -1
	for rest := acceptEncoding; rest != ""; {
		var elem string
		elem, rest, _ = strings.Cut(rest, ",")
		name, params, _ := strings.Cut(elem, ";")
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		q, ok := parseQ(params)
		if !ok {
			continue
		}
		switch {
		case name == "*":
			if star < 0 {
				star = q
			}
		case strings.EqualFold(name, "identity"):
			if ident < 0 {
				ident = q
			}
		default:
			for i, p := range prefs {
				if qs[i] < 0 && (strings.EqualFold(name, p) || p == "gzip" && strings.EqualFold(name, "x-gzip")) {
					qs[i] = q
				}
			}
		}
	}
	best, bestQ := -1, 0
	for i, q := range qs {
		if q < 0 {
			q = max(star, 0)
		}
		if q > bestQ {
			best, bestQ = i, q
		}
	}
	if best < 0 || ident > bestQ {
		return ""
	}
	return prefs[best]
}

// parseQ reads the q parameter of one Accept-Encoding element as
// thousandths (RFC 9110 section 12.4.2: "0" to "1" with up to three
// decimals). No q parameter means 1000.
func parseQ(params string) (int, bool) {
	for params != "" {
		var p string
		p, params, _ = strings.Cut(params, ";")
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		if !strings.EqualFold(strings.TrimSpace(k), "q") {
			continue
		}
		v = strings.TrimSpace(v)
		if v == "" || len(v) > 5 || (v[0] != '0' && v[0] != '1') {
			return 0, false
		}
		q := int(v[0]-'0') * 1000
		if len(v) > 1 {
			if v[1] != '.' {
				return 0, false
			}
			scale := 100
			for _, c := range []byte(v[2:]) {
				if c < '0' || c > '9' {
					return 0, false
				}
				q += int(c-'0') * scale
				scale /= 10
			}
		}
		if q > 1000 {
			return 0, false
		}
		return q, true
	}
	return 1000, true
}
