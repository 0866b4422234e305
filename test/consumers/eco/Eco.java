/*
 * Eco.java - a Java SunPKCS11 consumer (test/consumers/eco.sh), run once
 * with the vendor's module and once with the front, its standard output
 * compared. One JVM does all the work of one configuration:
 *
 *   java -cp DIR Eco CONFIG PIN [p11kit-rpc]
 *
 * CONFIG is a SunPKCS11 configuration (name, library, slot). Prints the key
 * store's entries, then one line per operation: RSA and ECDSA signatures
 * (verified with the certificate's public key by the JDK's own provider;
 * RSA PKCS#1 v1.5 is deterministic, so its digest is printed too), AES with
 * the token's key and with a session key, SecureRandom, and 4 threads
 * signing at once. Random values are never printed, only their checks
 * ("ECO-OK" or "ECO-FAILED"); an exception is a step's ECO-FAILED line.
 * p11kit-rpc: the module is p11-kit 0.24's proxy (or the front over it),
 * whose RPC fails AES encryption: that step prints "fails" and the cause.
 */
import java.security.*;
import java.security.cert.X509Certificate;
import java.util.*;
import java.util.concurrent.*;
import javax.crypto.*;
import javax.crypto.spec.*;

public class Eco {
    static final byte[] MSG = "libhaext ecosystem test message".getBytes();

    static String hex(byte[] b, int n) {
        StringBuilder s = new StringBuilder();
        for (int i = 0; i < Math.min(n, b.length); i++) s.append(String.format("%02x", b[i]));
        return s.toString();
    }

    static String sha(byte[] b) throws Exception {
        return hex(MessageDigest.getInstance("SHA-256").digest(b), 8);
    }

    static String signLine(Provider p, String alg, PrivateKey k, X509Certificate c, boolean deterministic)
            throws Exception {
        Signature s = Signature.getInstance(alg, p);
        s.initSign(k);
        s.update(MSG);
        byte[] sig = s.sign();
        Signature v = Signature.getInstance(alg); // the JDK's own provider
        v.initVerify(c.getPublicKey());
        v.update(MSG);
        return "verify " + (deterministic ? "sha256=" + sha(sig) + " " : "") + ok(v.verify(sig));
    }

    interface Step {
        String run() throws Exception;
    }

    /* One line per step: its result, or the exception it threw (ECO-FAILED,
     * unless the stack is known to fail the step: then "fails"). */
    static void step(String name, Step s, boolean knownToFail) {
        String out;
        try {
            out = s.run();
        } catch (Exception e) {
            Throwable root = e;
            while (root.getCause() != null) root = root.getCause();
            out = (knownToFail ? "fails " : "ECO-FAILED ") + e.getClass().getSimpleName()
                    + (root != e ? ", caused by " + root : "");
        }
        System.out.println(name + ": " + out);
    }

    static void step(String name, Step s) {
        step(name, s, false);
    }

    static String ok(boolean b) {
        return b ? "ECO-OK" : "ECO-FAILED";
    }

    /* AES/CBC/PKCS5Padding where the token has CKM_AES_CBC_PAD; p11-kit
     * 0.24's proxy carries AES-ECB alone, so AES/ECB/NoPadding there. */
    static String aesTransform(Provider p) {
        for (String t : new String[] {"AES/CBC/PKCS5Padding", "AES/ECB/NoPadding"}) {
            try {
                Cipher.getInstance(t, p);
                return t;
            } catch (GeneralSecurityException e) {
                // try the next one
            }
        }
        return "AES/CBC/PKCS5Padding";
    }

    static String aesRoundTrip(Provider p, Key k, boolean printCipher) throws Exception {
        String t = aesTransform(p);
        byte[] plain = Arrays.copyOf(MSG, 32); // two blocks: no padding needed
        Cipher e = Cipher.getInstance(t, p);
        Cipher d = Cipher.getInstance(t, p);
        if (t.contains("CBC")) {
            e.init(Cipher.ENCRYPT_MODE, k, new IvParameterSpec(new byte[16]));
            d.init(Cipher.DECRYPT_MODE, k, new IvParameterSpec(new byte[16]));
        } else {
            e.init(Cipher.ENCRYPT_MODE, k);
            d.init(Cipher.DECRYPT_MODE, k);
        }
        byte[] ct = e.doFinal(plain);
        return t + " round trip " + ok(Arrays.equals(d.doFinal(ct), plain)) + (printCipher ? " sha256=" + sha(ct) : "");
    }

    public static void main(String[] args) throws Exception {
        Provider p = Security.getProvider("SunPKCS11").configure(args[0]);
        Security.addProvider(p);
        char[] pin = args[1].toCharArray();
        boolean p11kitRpc = args.length > 2 && args[2].equals("p11kit-rpc");
        KeyStore ks = KeyStore.getInstance("PKCS11", p);
        ks.load(null, pin);
        List<String> aliases = Collections.list(ks.aliases());
        Collections.sort(aliases);
        for (String a : aliases) {
            String kind = ks.isKeyEntry(a) ? "key" : "cert";
            Key k = ks.isKeyEntry(a) ? ks.getKey(a, pin) : null;
            X509Certificate c = (X509Certificate) ks.getCertificate(a);
            System.out.println("entry " + a + " " + kind + (k != null ? " " + k.getAlgorithm() : "")
                    + (c != null ? " " + c.getSubjectX500Principal().getName() + " pub=" + sha(c.getPublicKey().getEncoded()) : ""));
        }
        PrivateKey rsa = (PrivateKey) ks.getKey("rsa", pin);
        PrivateKey ec = (PrivateKey) ks.getKey("ec", pin);
        X509Certificate rsaCert = (X509Certificate) ks.getCertificate("rsa");
        X509Certificate ecCert = (X509Certificate) ks.getCertificate("ec");
        step("SHA256withRSA", () -> signLine(p, "SHA256withRSA", rsa, rsaCert, true));
        step("SHA256withECDSA", () -> signLine(p, "SHA256withECDSA", ec, ecCert, false));
        step("SecureRandom", () -> {
            SecureRandom r = SecureRandom.getInstance("PKCS11", p);
            byte[] a = new byte[32], b = new byte[32];
            r.nextBytes(a);
            r.nextBytes(b);
            return "2x32 bytes, distinct and not zero " + ok(!Arrays.equals(a, b) && !Arrays.equals(a, new byte[32]));
        });
        // 4 threads, 25 RSA and 25 ECDSA signatures each, every one verified.
        step("4 threads", () -> {
            ExecutorService pool = Executors.newFixedThreadPool(4);
            List<Future<Integer>> fs = new ArrayList<>();
            for (int t = 0; t < 4; t++) {
                fs.add(pool.submit(() -> {
                    int good = 0;
                    for (int i = 0; i < 25; i++) {
                        good += signLine(p, "SHA256withRSA", rsa, rsaCert, false).endsWith("ECO-OK") ? 1 : 0;
                        good += signLine(p, "SHA256withECDSA", ec, ecCert, false).endsWith("ECO-OK") ? 1 : 0;
                    }
                    return good;
                }));
            }
            int good = 0;
            try {
                for (Future<Integer> f : fs) good += f.get();
            } finally {
                pool.shutdown();
            }
            return "200 signatures, " + good + " verified " + ok(good == 200);
        });
        // AES: the token's key (deterministic: its ciphertext is printed), then a
        // session key. Last: through p11-kit 0.24's RPC (p11kitRpc) C_Encrypt
        // ends in CKR_BUFFER_TOO_SMALL, and leaves the session's operation
        // active for SunPKCS11's next user of that session.
        step("AES token key", () -> aesRoundTrip(p, ks.getKey("aes", pin), true), p11kitRpc);
        step("AES session key", () -> {
            KeyGenerator kg = KeyGenerator.getInstance("AES", p);
            kg.init(256);
            return aesRoundTrip(p, kg.generateKey(), false);
        }, p11kitRpc);
        System.out.println("done");
        System.exit(0);
    }
}
