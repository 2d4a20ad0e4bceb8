package local.opensearch;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.logging.log4j.LogManager;
import org.apache.logging.log4j.Logger;
import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.index.mapper.MapperExtrasPlugin;
import org.opensearch.index.reindex.ReindexPlugin;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

/**
 * A single-node OpenSearch server for the local stack, embedded in a plain Java main.
 *
 * <p>The distribution's tarball is not needed: the server jar and the module jars come from Maven
 * Central and the modules are handed to the node as classpath plugins. No security plugin, HTTP
 * only, bound to 127.0.0.1.
 *
 * <pre>
 * java -Xms512m -Xmx512m -cp ... local.opensearch.LocalNode DATA_DIR [HTTP_PORT]
 * </pre>
 *
 * HTTP_PORT defaults to $ETL_OPENSEARCH_PORT, then 9200; the transport port range to
 * $ETL_OPENSEARCH_TRANSPORT_PORT, then 9300-9400. DATA_DIR holds path.home (config/, plugins/,
 * modules/), data/ (path.data) and logs/ (path.logs). SIGTERM closes the node cleanly.
 */
public final class LocalNode {

    /** The modules the distribution would load from modules/, here taken from the classpath. */
    static final List<Class<? extends Plugin>> PLUGINS = List.of(
        Netty4Plugin.class,
        CommonAnalysisPlugin.class,
        MapperExtrasPlugin.class,
        ReindexPlugin.class,
        PainlessPlugin.class
    );

    static final String DEFAULT_REPLICAS = "cluster.default_number_of_replicas";

    /** Node's constructor that takes classpath plugins is protected. */
    static final class EmbeddedNode extends Node {
        EmbeddedNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
            super(environment, plugins, true);
        }
    }

    private LocalNode() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 1 || args.length > 2) {
            System.err.println("usage: LocalNode DATA_DIR [HTTP_PORT]");
            System.exit(2);
        }
        Path dir = Paths.get(args[0]).toAbsolutePath().normalize();
        String httpPort = args.length > 1 ? args[1] : env("ETL_OPENSEARCH_PORT", "9200");
        String transportPort = env("ETL_OPENSEARCH_TRANSPORT_PORT", "9300-9400");
        for (String sub : List.of("config", "plugins", "modules", "data", "logs")) {
            Files.createDirectories(dir.resolve(sub));
        }

        Settings settings = Settings.builder()
            .put("cluster.name", "etl-local")
            .put("node.name", "etl-local-1")
            .put("path.home", dir.toString())
            .put("path.data", dir.resolve("data").toString())
            .put("path.logs", dir.resolve("logs").toString())
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.type", "netty4")
            .put("transport.type", "netty4")
            .put("http.port", httpPort)
            .put("transport.port", transportPort)
            // A local disk may be nearly full; never refuse to allocate shards or go read-only.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("action.auto_create_index", true)
            .build();

        Environment environment = InternalSettingsPreparer.prepareEnvironment(
            settings, Map.of(), dir.resolve("config"), () -> "etl-local-1");
        Logger logger = LogManager.getLogger(LocalNode.class);

        EmbeddedNode node = new EmbeddedNode(environment, PLUGINS);
        CountDownLatch closed = new CountDownLatch(1);
        // OpenSearch's threads are all daemons: main waits on the latch, the hook releases it.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                logger.info("stopping");
                node.close();
                if (!node.awaitClose(15, TimeUnit.SECONDS)) {
                    logger.warn("node did not close within 15s");
                }
                logger.info("stopped");
            } catch (Exception e) {
                logger.error("failed to close the node", e);
            } finally {
                LogManager.shutdown();
                closed.countDown();
            }
        }, "local-node-shutdown"));

        try {
            node.start();
        } catch (Throwable t) {
            logger.error("node failed to start", t);
            System.exit(1);
        }
        // One node: replicas could never be assigned and every index would stay yellow. This
        // setting is only read from the cluster state, so it cannot go in the node settings.
        try {
            node.client().admin().cluster().prepareUpdateSettings()
                .setPersistentSettings(Settings.builder().put(DEFAULT_REPLICAS, 0))
                .get();
        } catch (Exception e) {
            logger.warn("could not set " + DEFAULT_REPLICAS + "=0; new indices will be yellow", e);
        }
        logger.info("etl-local node started: http://127.0.0.1:{}", httpPort);
        closed.await();
    }

    private static String env(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isBlank() ? fallback : value;
    }
}
