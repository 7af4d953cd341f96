"""securefvpa.models: the variational preference model and its baselines.

- ``kl``: closed-form KL terms (pure numpy/array-namespace code, no torch import)
- ``encoders``: pair encoder + attention-pooling set encoder -> q(z | context)
- ``priors``: the Gumbel-Softmax Gaussian-mixture prior (nn.Embedding tables), temperature schedule
- ``reward``: reward head r(x, y, u) with mixture-heads / FiLM / concat conditioning
- ``preference``: ``PreferenceModel`` (btl, vpl, fedvpa-gp, oracle) and its ELBO
- ``factory``: ``build_model(cfg, embed_dim=, n_types=, seed=)``
- ``batch``: ``EpisodeBatch``, the model's input contract
- ``metrics``: accuracy, mutual information, active components, posterior collapse
- ``planted``: a planted two-type problem in embedding space for tests and sanity checks
"""
