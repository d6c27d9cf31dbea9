// Package listener holds the building blocks of the gateway's public
// listeners: the TLS configuration with SNI certificate selection and
// atomic certificate reload, the PROXY protocol (v1 and v2) for listeners
// behind an L4 load balancer, the plain-HTTP redirect to HTTPS, the HTTP
// protocol set (HTTP/1.1, h2 via ALPN, h2c), the release of idle keep-alive
// connections (ReleaseIdle), and the handoff of one socket from a server to
// its successor on reload (Handoff). The gateway composes them; nothing here
// starts a server.
package listener
