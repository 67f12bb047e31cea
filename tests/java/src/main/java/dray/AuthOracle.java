package dray;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.StringJoiner;

import javax.security.auth.x500.X500Principal;

import org.apache.kafka.common.Uuid;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AccessControlEntryFilter;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.metrics.Metrics;
import org.apache.kafka.common.metrics.internals.PluginMetricsImpl;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourcePatternFilter;
import org.apache.kafka.common.resource.ResourceType;
import org.apache.kafka.common.security.auth.KafkaPrincipal;
import org.apache.kafka.common.security.auth.SecurityProtocol;
import org.apache.kafka.common.security.scram.ScramCredential;
import org.apache.kafka.common.security.scram.internals.ScramFormatter;
import org.apache.kafka.common.security.scram.internals.ScramMechanism;
import org.apache.kafka.common.security.ssl.SslPrincipalMapper;
import org.apache.kafka.metadata.authorizer.StandardAcl;
import org.apache.kafka.metadata.authorizer.StandardAuthorizer;
import org.apache.kafka.server.authorizer.Action;
import org.apache.kafka.server.authorizer.AuthorizableRequestContext;
import org.apache.kafka.server.authorizer.AuthorizationResult;

/**
 * Kafka's own security code as a test oracle for dray_broker/auth (tests/unit/test_auth_kafka_oracle.py): its
 * StandardAuthorizer (KRaft), AclBindingFilter, SslPrincipalMapper and ScramFormatter, and the JDK's X500Principal.
 *
 * One command per stdin line, tab separated; strings are hex of their UTF-8 bytes, enums their Kafka codes;
 * one answer line per command on stdout.
 * <pre>
 * reset SUPER_USERS(;-separated) ALLOW_EVERYONE(0|1)    -> ok       a new authorizer, no ACLs
 * acl RT NAME PT PRINCIPAL HOST OP PERM                  -> ok       add an ACL (loaded by the next "load")
 * load                                                   -> ok
 * authorize PRINCIPAL HOST(ip) OP RT NAME                -> 1|0
 * bytype PRINCIPAL HOST(ip) OP RT                        -> 1|0      authorizeByResourceType
 * filter RT NAME|- PT PRINCIPAL|- HOST|- OP PERM         -> i,j,...  indexes of the ACLs the filter matches
 * dn DER                                                 -> NAME     X500Principal(der).getName()
 * map RULES DN                                           -> NAME | !ExceptionClass
 * (NAME answers are hex of UTF-8 too: a name may hold a line break)
 * scram MECHANISM PASSWORD SALT(hex bytes) ITERATIONS    -> STORED_KEY SERVER_KEY (hex)
 * </pre>
 */
public final class AuthOracle {
    private static final HexFormat HEX = HexFormat.of();

    private AuthOracle() {
    }

    private static String text(String hex) {
        return new String(HEX.parseHex(hex), StandardCharsets.UTF_8);
    }

    private static String hex(String text) {
        return HEX.formatHex(text.getBytes(StandardCharsets.UTF_8));
    }

    private static String textOrNull(String field) {
        return "-".equals(field) ? null : text(field);
    }

    private static AuthorizableRequestContext context(KafkaPrincipal principal, String host) throws Exception {
        InetAddress address = InetAddress.getByName(host);
        return new AuthorizableRequestContext() {
            public String listenerName() { return "SASL_PLAINTEXT"; }
            public SecurityProtocol securityProtocol() { return SecurityProtocol.SASL_PLAINTEXT; }
            public KafkaPrincipal principal() { return principal; }
            public InetAddress clientAddress() { return address; }
            public int requestType() { return 3; }
            public int requestVersion() { return 0; }
            public String clientId() { return "oracle"; }
            public int correlationId() { return 0; }
        };
    }

    private static KafkaPrincipal principal(String hex) {
        String s = text(hex);
        int colon = s.indexOf(':');
        return new KafkaPrincipal(s.substring(0, colon), s.substring(colon + 1));
    }

    public static void main(String[] args) throws Exception {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");  // before the first logger
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
        StandardAuthorizer authorizer = null;
        List<StandardAcl> acls = new ArrayList<>();
        String line;
        while ((line = in.readLine()) != null) {
            String[] f = line.split("\t", -1);
            switch (f[0]) {
                case "reset": {
                    authorizer = new StandardAuthorizer();
                    Map<String, Object> config = new HashMap<>();
                    config.put("node.id", "1");
                    config.put("super.users", text(f[1]));
                    config.put("allow.everyone.if.no.acl.found", "1".equals(f[2]) ? "true" : "false");
                    authorizer.configure(config);
                    authorizer.withPluginMetrics(new PluginMetricsImpl(new Metrics(), Map.of()));
                    acls.clear();
                    out.println("ok");
                    break;
                }
                case "acl":
                    acls.add(new StandardAcl(ResourceType.fromCode(Byte.parseByte(f[1])), text(f[2]),
                        PatternType.fromCode(Byte.parseByte(f[3])), text(f[4]), text(f[5]),
                        AclOperation.fromCode(Byte.parseByte(f[6])), AclPermissionType.fromCode(Byte.parseByte(f[7]))));
                    out.println("ok");
                    break;
                case "load": {
                    Map<Uuid, StandardAcl> snapshot = new HashMap<>();
                    for (StandardAcl acl : acls) snapshot.put(Uuid.randomUuid(), acl);
                    authorizer.loadSnapshot(snapshot);
                    authorizer.completeInitialLoad();
                    out.println("ok");
                    break;
                }
                case "authorize": {
                    Action action = new Action(AclOperation.fromCode(Byte.parseByte(f[3])),
                        new ResourcePattern(ResourceType.fromCode(Byte.parseByte(f[4])), text(f[5]), PatternType.LITERAL),
                        1, false, false);
                    AuthorizationResult result = authorizer.authorize(context(principal(f[1]), f[2]), List.of(action)).get(0);
                    out.println(result == AuthorizationResult.ALLOWED ? "1" : "0");
                    break;
                }
                case "bytype": {
                    AuthorizationResult result = authorizer.authorizeByResourceType(context(principal(f[1]), f[2]),
                        AclOperation.fromCode(Byte.parseByte(f[3])), ResourceType.fromCode(Byte.parseByte(f[4])));
                    out.println(result == AuthorizationResult.ALLOWED ? "1" : "0");
                    break;
                }
                case "filter": {
                    AclBindingFilter filter = new AclBindingFilter(
                        new ResourcePatternFilter(ResourceType.fromCode(Byte.parseByte(f[1])), textOrNull(f[2]),
                            PatternType.fromCode(Byte.parseByte(f[3]))),
                        new AccessControlEntryFilter(textOrNull(f[4]), textOrNull(f[5]),
                            AclOperation.fromCode(Byte.parseByte(f[6])), AclPermissionType.fromCode(Byte.parseByte(f[7]))));
                    StringJoiner matched = new StringJoiner(",");
                    for (int i = 0; i < acls.size(); i++) {
                        StandardAcl acl = acls.get(i);
                        AclBinding binding = new AclBinding(new ResourcePattern(acl.resourceType(), acl.resourceName(),
                            acl.patternType()), new AccessControlEntry(acl.principal(), acl.host(), acl.operation(),
                            acl.permissionType()));
                        if (filter.matches(binding)) matched.add(Integer.toString(i));
                    }
                    out.println(matched);
                    break;
                }
                case "dn":
                    out.println(hex(new X500Principal(HEX.parseHex(f[1])).getName()));
                    break;
                case "map":
                    try {
                        out.println(hex(SslPrincipalMapper.fromRules(text(f[1])).getName(text(f[2]))));
                    } catch (Exception e) {
                        out.println("!" + e.getClass().getSimpleName());
                    }
                    break;
                case "scram": {
                    ScramFormatter formatter = new ScramFormatter(ScramMechanism.forMechanismName(f[1]));
                    byte[] salt = HEX.parseHex(f[3]);
                    int iterations = Integer.parseInt(f[4]);
                    ScramCredential credential = formatter.generateCredential(salt,
                        formatter.saltedPassword(text(f[2]), salt, iterations), iterations);
                    out.println(HEX.formatHex(credential.storedKey()) + " " + HEX.formatHex(credential.serverKey()));
                    break;
                }
                default:
                    out.println("!unknown command " + f[0]);
            }
            out.flush();
        }
    }
}
