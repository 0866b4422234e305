module github.com/libhaext/libhaext

// 1.23: the runtime's timer semantics of Go 1.23 (asynctimerchan=0). Under
// 1.22's, a timer already stopped still woke the process at its deadline:
// an idle host woke statusTimeout after its last status call.
go 1.23

require (
	github.com/miekg/pkcs11 v1.1.2
	github.com/stretchr/testify v1.12.1
	golang.org/x/sys v0.30.0
	gopkg.in/ini.v1 v1.67.3
)

require go.yaml.in/yaml/v3 v3.0.5 // indirect
