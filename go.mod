module github.com/libhaext/libhaext

go 1.26.8

require (
	github.com/miekg/pkcs11 v1.1.2 // indirect
	github.com/stretchr/testify v1.12.1 // indirect
	gopkg.in/ini.v1 v1.67.3 // indirect
)
